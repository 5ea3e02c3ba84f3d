"""Labels a person can check by eye: one token per character (tests/chartok.py)."""

from __future__ import annotations

import pytest

from chartok import CharTokenizer
from sftkit.core.conversation import Conversation
from sftkit.core.errors import RowRejected, TemplateError
from sftkit.core.vocab import MaskPolicy, Overflow
from sftkit.templates import IGNORE, Renderer, load_template

TWO_TURNS = Conversation.from_messages(
    [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok!"},
    ],
    source="rows.jsonl:7",
)


def trained(template: str, conv: Conversation, policy: MaskPolicy = MaskPolicy.assistant, **kw) -> str:
    tok = CharTokenizer(eos_token=kw.pop("eos", "<|im_end|>"))
    r = Renderer(load_template(template), tok, policy, **kw).render(conv)
    assert len(r.input_ids) == len(r.labels)
    return tok.trained_text(r.labels)


def test_assistant_policy_trains_every_reply_through_its_end_of_turn() -> None:
    assert trained("chatml", TWO_TURNS) == "hi there<|im_end|>ok!<|im_end|>"


def test_last_policy_trains_only_the_final_reply() -> None:
    assert trained("chatml", TWO_TURNS, MaskPolicy.last) == "ok!<|im_end|>"


def test_all_policy_trains_everything() -> None:
    text = "".join(s.text for s in load_template("chatml").segments(TWO_TURNS))
    assert trained("chatml", TWO_TURNS, MaskPolicy.all) == text


def test_newline_after_end_of_turn_is_not_trained() -> None:
    tok = CharTokenizer()
    r = Renderer(load_template("chatml"), tok).render(TWO_TURNS)
    assert r.text.endswith("<|im_end|>\n")
    assert r.labels[-1] == IGNORE and r.labels[-2] == tok.vocab["<|im_end|>"]


def test_qwen2_default_system_is_not_trained() -> None:
    conv = Conversation.from_messages(TWO_TURNS.to_dict()["messages"][1:])
    assert trained("qwen2_chatml", conv) == "hi there<|im_end|>ok!<|im_end|>"


def test_llama3_trains_eot() -> None:
    assert trained("llama3_instruct", TWO_TURNS, eos="<|end_of_text|>") == "hi there<|eot_id|>ok!<|eot_id|>"


def test_chatglm3_trains_the_next_role_marker_and_final_eos() -> None:
    # ChatGLM3 has no end-of-turn token: a reply ends where the model writes <|user|>.
    assert trained("chatglm3", TWO_TURNS, eos="</s>") == "\n hi there<|user|>\n ok!</s>"


def test_chatglm3_tool_call_trains_observation_marker() -> None:
    conv = Conversation.from_messages(
        [
            {"role": "user", "content": "w?"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]},
            {"role": "tool", "content": "9"},
            {"role": "assistant", "content": "9!"},
        ]
    )
    assert trained("chatglm3", conv, eos="</s>") == "f\n ```python\ntool_call(a=1)\n```<|observation|>\n 9!</s>"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mistral_instruct", " hi there</s> ok!</s>"),
        ("deepseek_chat", " hi there<｜end▁of▁sentence｜> ok!<｜end▁of▁sentence｜>"),
        ("baichuan2_chat", "hi there</s>ok!</s>"),
        ("gemma", "hi there<end_of_turn>ok!<end_of_turn>"),
    ],
)
def test_other_families(name: str, expected: str) -> None:
    assert trained(name, TWO_TURNS, eos="</s>") == expected


def test_reasoning_block_is_trained_with_the_reply() -> None:
    conv = Conversation.from_messages(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "hmm"}]
    )
    assert trained("qwen2_chatml", conv) == "<think>\nhmm\n</think>\n\na<|im_end|>"


def test_plain_text_rows_train_everything_plus_eos() -> None:
    assert trained("chatml", Conversation(text="just text")) == "just text<|im_end|>"


def test_prompt_text_is_the_training_prefix() -> None:
    r = Renderer(load_template("chatml"), CharTokenizer())
    prompt = r.prompt_text(TWO_TURNS)
    assert prompt.endswith("again<|im_end|>\n<|im_start|>assistant\n")
    assert r.render(TWO_TURNS).text == prompt + "ok!<|im_end|>\n"


# -- overflow (cutoff_len) ----------------------------------------------------


def _renderer(n: int, overflow: Overflow) -> Renderer:
    return Renderer(load_template("chatml"), CharTokenizer(), cutoff_len=n, overflow=overflow)


def test_short_rows_are_untouched() -> None:
    r = _renderer(1000, Overflow.error).render(TWO_TURNS)
    assert not r.truncated and r.text.endswith("ok!<|im_end|>\n")


def test_truncate_keeps_the_start() -> None:
    full = _renderer(10_000, Overflow.truncate).render(TWO_TURNS)
    # 37 prompt tokens: system turn (13), user turn (13), "<|im_start|>assistant\n" (11).
    r = _renderer(40, Overflow.truncate).render(TWO_TURNS)
    assert r.truncated and len(r.input_ids) == 40
    assert r.input_ids == full.input_ids[:40] and r.labels == full.labels[:40]
    assert CharTokenizer().trained_text(r.labels) == "hi "


def test_truncate_rejects_a_row_left_with_nothing_to_train() -> None:
    with pytest.raises(RowRejected, match=r"rows\.jsonl:7: truncating to cutoff_len=10 leaves no trainable"):
        _renderer(10, Overflow.truncate).render(TWO_TURNS)


def test_drop_rejects_the_row_and_the_batch_goes_on() -> None:
    short = Conversation.from_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    out = _renderer(30, Overflow.drop).render_many([TWO_TURNS, short])
    assert isinstance(out[0], RowRejected) and "rows.jsonl:7: dropped" in str(out[0])
    assert not isinstance(out[1], RowRejected) and out[1].text.endswith("b<|im_end|>\n")


def test_error_stops_the_run() -> None:
    with pytest.raises(TemplateError, match=r"rows\.jsonl:7: \d+ tokens exceed cutoff_len=30") as e:
        _renderer(30, Overflow.error).render(TWO_TURNS)
    assert not isinstance(e.value, RowRejected)


# -- render_many: chunks, per-row errors ------------------------------------------


def test_render_many_chunks_and_returns_row_errors_in_place() -> None:
    tool_row = Conversation.from_messages(
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "9"}, {"role": "assistant", "content": "a"}],
        source="rows.jsonl:3",
    )
    rows = [TWO_TURNS, TWO_TURNS, tool_row, TWO_TURNS, TWO_TURNS]
    no_tools = load_template("chatml").spec.model_dump()
    del no_tools["turns"]["tool"]
    from sftkit.templates import JSONTemplate

    r = Renderer(JSONTemplate.from_dict(no_tools), CharTokenizer())
    r.CHUNK = 2  # three chunks through the tokenizer thread
    out = r.render_many(rows, errors="return")
    assert isinstance(out[2], TemplateError) and "rows.jsonl:3" in str(out[2]) and "'tool'" in str(out[2])
    whole = r.render(TWO_TURNS)
    assert all((x.input_ids, x.labels) == (whole.input_ids, whole.labels) for k, x in enumerate(out) if k != 2)
    with pytest.raises(TemplateError, match=r"rows\.jsonl:3"):
        r.render_many(rows)


def test_render_all_reports_a_row_the_template_cannot_render() -> None:
    from sftkit.data.stats import render_all
    from sftkit.templates import JSONTemplate

    bad = Conversation.from_messages(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": "r"}], source="t.jsonl:2"
    )
    spec = load_template("chatml").spec.model_dump() | {"reasoning": None}
    ok, rejects = render_all(Renderer(JSONTemplate.from_dict(spec), CharTokenizer()), [TWO_TURNS, bad, TWO_TURNS])
    assert len(ok) == 2 and [(r.file, r.line) for r in rejects] == [("t.jsonl", 2)]
    assert rejects[0].reason.startswith("template error: the reply has a reasoning block")
