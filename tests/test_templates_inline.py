"""Fields the tokenizer's own template ignores (reasoning, tool calls, tools) are written into
the text, trained, and rendered the same way at inference; a template that supports them is
left alone; the contract check names what was inlined and fails on a template that drops data."""

from __future__ import annotations

import copy
import json

from sftkit.core.conversation import Conversation, Message
from sftkit.data import load_file
from sftkit.templates import HFChatTemplate, Renderer
from sftkit.templates.check import check_template
from sftkit.templates.inline import Support, lower
from sftkit.templates.render import IGNORE

COT = {"question": "舌苔黄腻说明什么？", "thinking": "黄苔主热，腻苔主湿。", "answer": "多为湿热内蕴。"}
CALL = {"name": "get_weather", "arguments": {"city": "杭州"}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

# a ChatML template that renders reasoning_content itself (as Qwen3-style templates do)
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _trained_text(tokenizer, r) -> str:
    return tokenizer.decode([i for i, lab in zip(r.input_ids, r.labels, strict=True) if lab != IGNORE])


def test_bundled_template_support_is_probed(tokenizer) -> None:
    t = HFChatTemplate(tokenizer)
    assert t.support == Support(reasoning=False, tool_calls=False, tool_role=True, tools=False)
    assert "reasoning" in t.notes and "<think>" in t.notes


def test_cot_row_keeps_its_thinking_and_trains_it(tokenizer, tmp_path) -> None:
    f = tmp_path / "cot.jsonl"
    f.write_text(json.dumps(COT, ensure_ascii=False) + "\n", encoding="utf-8")
    conv = load_file(f).conversations[0]
    r = Renderer(HFChatTemplate(tokenizer), tokenizer).render(conv)
    assert "<think>\n黄苔主热，腻苔主湿。\n</think>\n\n多为湿热内蕴。<|im_end|>" in r.text
    trained = _trained_text(tokenizer, r)
    assert trained.startswith("<think>") and "黄苔主热" in trained and trained.endswith("多为湿热内蕴。<|im_end|>")
    assert "舌苔黄腻" not in trained


def test_inference_prompt_is_a_prefix_of_the_inlined_training_text(tokenizer) -> None:
    conv = Conversation([Message("user", "1+1?"), Message("assistant", "2", reasoning="加法"),
                         Message("user", "再加1?"), Message("assistant", "3", reasoning="2+1")])
    r = Renderer(HFChatTemplate(tokenizer), tokenizer)
    full, prompt = r.render(conv), r.prompt_text(conv)
    assert full.text.startswith(prompt) and "<think>\n加法\n</think>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tool_calls_and_tools_are_written_inline(tokenizer) -> None:
    conv = Conversation([Message("user", "杭州天气？"), Message("assistant", "", tool_calls=[CALL]),
                         Message("tool", "晴，25度"), Message("assistant", "杭州晴，25度。")], tools=TOOLS)
    t = HFChatTemplate(tokenizer)
    r = Renderer(t, tokenizer).render(conv)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "杭州"}}\n</tool_call><|im_end|>'
    assert call in r.text and call in _trained_text(tokenizer, r)
    assert "<tools>\n" + json.dumps(TOOLS[0], ensure_ascii=False) + "\n</tools>\n\n杭州天气？" in r.text
    assert "<|im_start|>tool\n晴，25度<|im_end|>" in r.text  # this template has a tool role of its own
    # the default system prompt stays, and the replies keep their message indices
    assert r.text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert [s.message_index for s in t.segments(conv) if s.kind == "reply"] == [1, 3]


def test_tools_join_an_existing_system_prompt(tokenizer) -> None:
    conv = Conversation([Message("system", "你是助手。"), Message("user", "u"), Message("assistant", "a")], tools=TOOLS)
    low = lower(conv, HFChatTemplate(tokenizer).support)
    assert low.messages[0].content.startswith("你是助手。\n\nYou may call these tools")
    assert low.tools is None and conv.tools == TOOLS  # the row itself is not changed


def test_a_template_that_renders_reasoning_is_left_alone(tokenizer) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = THINKING_TEMPLATE
    t = HFChatTemplate(tok)
    assert t.support.reasoning and not t.support.tool_calls
    conv = Conversation([Message("user", "q"), Message("assistant", "a", reasoning="r")])
    r = Renderer(t, tok).render(conv)
    assert r.text == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>r</think>a<|im_end|>\n"
    assert r.text == tok.apply_chat_template([{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": "a", "reasoning_content": "r"}],
                                             tokenize=False)


def test_check_names_what_was_inlined(tokenizer) -> None:
    convs = [Conversation([Message("user", "q"), Message("assistant", "a", reasoning="r")], source="d.jsonl:1")]
    report = check_template(HFChatTemplate(tokenizer), tokenizer, convs)
    by = {f.check: f for f in report.findings}
    assert report.ok and by["content_rendered"].status == "ok"
    assert by["inlined"].status == "warn" and "<think>" in by["inlined"].message
    plain = [Conversation([Message("user", "q"), Message("assistant", "a")])]
    assert "inlined" not in {f.check for f in check_template(HFChatTemplate(tokenizer), tokenizer, plain).findings}


def test_check_fails_a_template_that_drops_data(tokenizer) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    convs = [Conversation([Message("system", "只用中文回答。"), Message("user", "q"), Message("assistant", "a")],
                          source="d.jsonl:7")]
    report = check_template(HFChatTemplate(tok), tok, convs)
    bad = {f.check: f for f in report.failures}
    assert not report.ok and "content_rendered" in bad
    assert "d.jsonl:7 message 0 (system): content not rendered" in bad["content_rendered"].message


def test_the_check_sample_holds_a_row_of_every_kind() -> None:
    from sftkit.data.prepare import check_sample

    plain = [Conversation([Message("user", f"q{i}"), Message("assistant", "a")]) for i in range(100)]
    cot = Conversation([Message("user", "q"), Message("assistant", "a", reasoning="r")])
    tool = Conversation([Message("user", "q"), Message("assistant", "", tool_calls=[CALL])], tools=TOOLS)
    sample = check_sample([*plain, cot, *plain, tool, cot], n=32)
    assert sample[:32] == plain[:32] and len(sample) == 34
    assert sample[32] is cot and sample[33] is tool


def test_a_generated_reply_is_scored_on_its_answer() -> None:
    from sftkit.templates.inline import answer_part

    assert answer_part("<think>\n黄苔主热\n</think>\n\n湿热内蕴").strip() == "湿热内蕴"
    assert answer_part("  <think>unfinished") == ""
    assert answer_part("plain <think>not leading</think>") == "plain <think>not leading</think>"
