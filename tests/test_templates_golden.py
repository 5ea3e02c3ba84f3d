"""Golden renderings of every shipped JSON template, byte for byte.

Expected strings are written out literally from each family's official chat
format (tokenizer_config chat_template / the family's own chat code), so a
change to a shipped template that alters what the model sees fails here.
"""

from __future__ import annotations

import pytest

from sftkit.core.conversation import Conversation
from sftkit.core.errors import TemplateError
from sftkit.templates import JSONTemplate, list_templates, load_template

SINGLE = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
SYSTEM = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
MULTI = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！😊"},
    {"role": "user", "content": "Tell a joke"},
    {"role": "assistant", "content": "No."},
]
TOOLS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"role": "tool", "content": "22C"},
    {"role": "assistant", "content": "It is 22C."},
]
THINK = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2", "reasoning": "easy"}]

QWEN_SYS = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
L3 = "<|start_header_id|>{}<|end_header_id|>\n\n"
DS_BOS, DS_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

GOLDEN: dict[str, dict[str, str]] = {
    "qwen2_chatml": {
        "single": QWEN_SYS + "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n",
        "system": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n",
        "multi": QWEN_SYS + "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！😊<|im_end|>\n"
        "<|im_start|>user\nTell a joke<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>\n",
        "tools": QWEN_SYS + "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nIt is 22C.<|im_end|>\n",
        "think": QWEN_SYS
        + "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n<think>\neasy\n</think>\n\n2<|im_end|>\n",
        "prompt": QWEN_SYS + "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    },
    "chatml": {
        "single": "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n",
        "system": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n",
        "multi": "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！😊<|im_end|>\n"
        "<|im_start|>user\nTell a joke<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>\n",
        "tools": "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n22C<|im_end|>\n<|im_start|>assistant\nIt is 22C.<|im_end|>\n",
        "prompt": "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    },
    "llama3_instruct": {
        "single": "<|begin_of_text|>"
        + L3.format("user")
        + "Hi!<|eot_id|>"
        + L3.format("assistant")
        + "Hello.<|eot_id|>",
        "system": "<|begin_of_text|>"
        + L3.format("system")
        + "Be brief.<|eot_id|>"
        + L3.format("user")
        + "2+2?<|eot_id|>"
        + L3.format("assistant")
        + "4<|eot_id|>",
        "multi": "<|begin_of_text|>"
        + L3.format("user")
        + "你好<|eot_id|>"
        + L3.format("assistant")
        + "你好！😊<|eot_id|>"
        + L3.format("user")
        + "Tell a joke<|eot_id|>"
        + L3.format("assistant")
        + "No.<|eot_id|>",
        "tools": "<|begin_of_text|>"
        + L3.format("user")
        + "Weather in Paris?<|eot_id|>"
        + L3.format("assistant")
        + '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        + L3.format("ipython")
        + "22C<|eot_id|>"
        + L3.format("assistant")
        + "It is 22C.<|eot_id|>",
        "prompt": "<|begin_of_text|>" + L3.format("user") + "Hi!<|eot_id|>" + L3.format("assistant"),
    },
    "chatglm3": {
        "single": "[gMASK]sop<|user|>\n Hi!<|assistant|>\n Hello.</s>",
        "system": "[gMASK]sop<|system|>\n Be brief.<|user|>\n 2+2?<|assistant|>\n 4</s>",
        "multi": "[gMASK]sop<|user|>\n 你好<|assistant|>\n 你好！😊<|user|>\n Tell a joke<|assistant|>\n No.</s>",
        "tools": "[gMASK]sop<|user|>\n Weather in Paris?<|assistant|>"
        "get_weather\n ```python\ntool_call(city='Paris')\n```<|observation|>\n 22C<|assistant|>\n It is 22C.</s>",
        "prompt": "[gMASK]sop<|user|>\n Hi!<|assistant|>",
    },
    "baichuan2_chat": {
        "single": "<reserved_106>Hi!<reserved_107>Hello.</s>",
        "system": "Be brief.<reserved_106>2+2?<reserved_107>4</s>",
        "multi": "<reserved_106>你好<reserved_107>你好！😊</s><reserved_106>Tell a joke<reserved_107>No.</s>",
        "prompt": "<reserved_106>Hi!<reserved_107>",
    },
    "deepseek_chat": {
        "single": DS_BOS + "User: Hi!\n\nAssistant: Hello." + DS_EOS,
        "system": DS_BOS + "Be brief.\n\nUser: 2+2?\n\nAssistant: 4" + DS_EOS,
        "multi": DS_BOS + "User: 你好\n\nAssistant: 你好！😊" + DS_EOS + "User: Tell a joke\n\nAssistant: No." + DS_EOS,
        "think": DS_BOS + "User: 1+1?\n\nAssistant: <think>\neasy\n</think>\n\n2" + DS_EOS,
        "prompt": DS_BOS + "User: Hi!\n\nAssistant:",
    },
    "mistral_instruct": {
        "single": "<s>[INST] Hi! [/INST] Hello.</s>",
        "system": "<s>[INST] Be brief.\n\n2+2? [/INST] 4</s>",
        "multi": "<s>[INST] 你好 [/INST] 你好！😊</s>[INST] Tell a joke [/INST] No.</s>",
        "prompt": "<s>[INST] Hi! [/INST]",
    },
    "gemma": {
        "single": "<bos><start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n",
        "system": "<bos><start_of_turn>user\nBe brief.\n\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
        "multi": "<bos><start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n你好！😊<end_of_turn>\n"
        "<start_of_turn>user\nTell a joke<end_of_turn>\n<start_of_turn>model\nNo.<end_of_turn>\n",
        "prompt": "<bos><start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n",
    },
}
CONVS = {"single": SINGLE, "system": SYSTEM, "multi": MULTI, "tools": TOOLS, "think": THINK}
CASES = [(name, case) for name, cases in GOLDEN.items() for case in cases if case != "prompt"]


def _text(name: str, messages: list[dict], gen: bool = False) -> str:
    segs = load_template(name).segments(Conversation.from_messages(messages), add_generation_prompt=gen)
    return "".join(s.text for s in segs)


def test_every_shipped_template_has_goldens() -> None:
    assert {n for n, _ in list_templates()} == set(GOLDEN)


@pytest.mark.parametrize(("name", "case"), CASES)
def test_golden(name: str, case: str) -> None:
    assert _text(name, CONVS[case]) == GOLDEN[name][case]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_generation_prompt_golden(name: str) -> None:
    assert _text(name, SINGLE[:1], gen=True) == GOLDEN[name]["prompt"]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_prompt_is_prefix_of_training_text(name: str) -> None:
    assert GOLDEN[name]["single"].startswith(GOLDEN[name]["prompt"])


def test_qwen2_tools_declared_in_system_prompt() -> None:
    conv = Conversation.from_messages(SINGLE, tools=[{"type": "function", "function": {"name": "f"}}])
    text = "".join(s.text for s in load_template("qwen2_chatml").segments(conv))
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to "
        "assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
        '<tools>\n{"type": "function", "function": {"name": "f"}}\n</tools>\n\n'
    )


def test_qwen2_consecutive_tool_results_share_one_turn() -> None:
    msgs = [*TOOLS[:2], {"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}, TOOLS[3]]
    assert (
        "<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response><|im_end|>\n"
        in _text("qwen2_chatml", msgs)
    )


def test_qwen2_reply_with_text_and_tool_call() -> None:
    msgs = [SINGLE[0], {"role": "assistant", "content": "Let me check.", "tool_calls": TOOLS[1]["tool_calls"]}]
    assert _text("qwen2_chatml", msgs).endswith(
        '<|im_start|>assistant\nLet me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "\n</tool_call><|im_end|>\n"
    )


def test_openai_string_arguments_are_parsed() -> None:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    msgs = [TOOLS[0], {"role": "assistant", "content": "", "tool_calls": [call]}]
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in _text("qwen2_chatml", msgs)


def test_llama3_trims_content() -> None:
    assert (
        _text("llama3_instruct", [{"role": "user", "content": "  Hi!\n"}, SINGLE[1]])
        == GOLDEN["llama3_instruct"]["single"]
    )


@pytest.mark.parametrize("name", ["mistral_instruct", "gemma", "baichuan2_chat", "deepseek_chat"])
def test_families_without_tool_turns_refuse_them(name: str) -> None:
    with pytest.raises(TemplateError, match=r"no 'tool' turn|no 'tool_call' format"):
        _text(name, TOOLS)


def test_folded_system_must_lead() -> None:
    with pytest.raises(TemplateError, match="system message after the first turn"):
        _text("mistral_instruct", [*SINGLE, {"role": "system", "content": "x"}])


def test_user_json_template_file(tmp_path) -> None:
    p = tmp_path / "mine.json"
    p.write_text(
        '{"name": "mine", "stop_strings": ["<end>"], "turns": {"system": {}, '
        '"user": {"open": "Q: ", "close": "\\n"}, "assistant": {"open": "A:", "content": " {content}", '
        '"close": "<end>\\n"}}}'
    )
    assert _text(str(p), SINGLE) == "Q: Hi!\nA: Hello.<end>\n"


def test_schema_errors_name_the_field(tmp_path) -> None:
    with pytest.raises(TemplateError, match=r"turns\.user\.clsoe"):
        JSONTemplate.from_dict(
            {"name": "x", "stop_strings": ["."], "turns": {"user": {"clsoe": ""}, "assistant": {}, "system": {}}}
        )
    with pytest.raises(TemplateError, match="missing assistant"):
        JSONTemplate.from_dict({"name": "x", "stop_strings": ["."], "turns": {"user": {}, "system": {}}})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(TemplateError, match=r"bad\.json:1: not valid JSON"):
        load_template(str(bad))
