"""Each layout -> Conversation -> the bundled template's text, written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftkit.core.errors import DataError
from sftkit.data import load_file
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.render import Renderer

SYS = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def _write(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    p = tmp_path / name
    if name.endswith(".json"):
        p.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    else:
        p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return Renderer(HFChatTemplate(tokenizer), tokenizer)


def _only(p: Path, **kw) -> object:
    res = load_file(p, **kw)
    assert res.rejects == [] and res.total == 1
    return res


def test_messages(tmp_path, renderer) -> None:
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"}]}  # fmt: skip
    res = _only(_write(tmp_path, "m.jsonl", [row]))
    assert res.format == "messages"
    text = renderer.render(res.conversations[0]).text
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )


def test_sharegpt_with_tools(tmp_path, renderer) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "It is 20 degrees."},
        ],
        "tools": '[{"name": "weather", "description": "Get weather", "parameters": {}}]',
    }
    res = _only(_write(tmp_path, "s.json", [row]))
    conv = res.conversations[0]
    assert res.format == "sharegpt"
    assert conv.tools == [{"name": "weather", "description": "Get weather", "parameters": {}}]
    assert conv.messages[1].tool_calls == [{"name": "weather", "arguments": {"city": "Paris"}}]
    assert [m.role for m in conv.messages] == ["user", "assistant", "tool", "assistant"]
    # this template renders neither tools nor tool calls: both are written inline (templates/inline.py)
    assert renderer.render(conv).text == (
        SYS + "<|im_start|>user\nYou may call these tools; reply with <tool_call> blocks:\n<tools>\n"
        '{"name": "weather", "description": "Get weather", "parameters": {}}\n</tools>\n\n'
        "Weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>tool\n{"temp": 20}<|im_end|>\n<|im_start|>assistant\nIt is 20 degrees.<|im_end|>\n'
    )


def test_alpaca_instruction_input_history_system(tmp_path, renderer) -> None:
    row = {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "S",
           "history": [["Hi", "Hey"]]}  # fmt: skip
    res = _only(_write(tmp_path, "a.json", [row]))
    assert res.format == "alpaca"
    assert renderer.render(res.conversations[0]).text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHey<|im_end|>\n"
        "<|im_start|>user\nTranslate\n\nbonjour<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    )


def test_alpaca_response_and_input_output(tmp_path, renderer) -> None:
    p = _write(
        tmp_path, "r.jsonl", [{"instruction": "Q", "input": "", "response": "A"}, {"input": "Q2", "output": "A2"}]
    )
    res = load_file(p)
    assert res.rejects == [] and res.format == "alpaca"
    texts = [renderer.render(c).text for c in res.conversations]
    assert texts == [
        SYS + "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n",
        SYS + "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n",
    ]


def test_cot(tmp_path, renderer) -> None:
    res = _only(_write(tmp_path, "c.jsonl", [{"question": "2+2?", "thinking": "2 plus 2 is 4.", "answer": "4"}]))
    conv = res.conversations[0]
    assert res.format == "cot" and conv.messages[-1].reasoning == "2 plus 2 is 4."
    # this template has no slot for thinking blocks: the block is written inline before the answer
    assert renderer.render(conv).text == (
        SYS + "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n2 plus 2 is 4.\n</think>\n\n"
        "4<|im_end|>\n"
    )


def test_text(tmp_path, renderer, tokenizer) -> None:
    res = _only(_write(tmp_path, "t.jsonl", [{"text": "Once upon a time."}]))
    assert res.format == "text" and res.conversations[0].text == "Once upon a time."
    assert renderer.render(res.conversations[0]).text == "Once upon a time." + tokenizer.eos_token


def test_csv_and_columns(tmp_path, renderer) -> None:
    p = tmp_path / "d.csv"
    p.write_text("prompt,reply,topic\nWhat is 1+1?,2 of course,math\n", encoding="utf-8")
    res = load_file(p, columns={"prompt": "prompt", "response": "reply", "label": "topic"})
    assert res.rejects == [] and res.conversations[0].label == "math"
    assert renderer.render(res.conversations[0]).text == (
        SYS + "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n2 of course<|im_end|>\n"
    )
    # the reverse direction {file_column: canonical} works too
    res2 = load_file(p, columns={"reply": "response", "prompt": "prompt"})
    assert res2.rejects == [] and res2.conversations[0].final_reply() == "2 of course"
    with pytest.raises(DataError, match="canonical"):
        load_file(p, columns={"foo": "bar"})


def test_openai_tool_calls_and_parts(tmp_path) -> None:
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Time?"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "now", "arguments": "{}"}}]},
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "Noon.", "reasoning_content": "read the tool"},
    ], "tools": [{"type": "function", "function": {"name": "now"}}]}  # fmt: skip
    conv = _only(_write(tmp_path, "o.jsonl", [row])).conversations[0]
    assert conv.messages[0].content == "Time?"
    assert conv.messages[1].tool_calls == [{"name": "now", "arguments": {}}]
    assert conv.messages[3].reasoning == "read the tool"


def test_parquet(tmp_path, renderer) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "Q", "input": "", "output": "A"},
                                         {"instruction": "Q", "input": "", "output": None}]), p)  # fmt: skip
    res = load_file(p)
    assert (res.total, res.valid) == (2, 1) and res.rejects[0].line == 2
    assert renderer.render(res.conversations[0]).text.endswith("<|im_start|>assistant\nA<|im_end|>\n")


def test_parquet_without_pyarrow(tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="pip install pyarrow"):
        load_file(tmp_path / "d.parquet")
