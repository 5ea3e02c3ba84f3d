"""The compiled form of a Jinja chat template gives exactly what Jinja gives, or is not used.

Every identity test renders each conversation twice: the first row of a shape is
rendered through Jinja (and checked against the compiled form), later rows of a
proven shape through the compiled form, which is what the assertions on
``stats`` make sure is exercised.
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from sftkit.core.conversation import Conversation
from sftkit.core.errors import TemplateError
from sftkit.core.vocab import MaskPolicy
from sftkit.data.stats import render_all
from sftkit.templates import HFChatTemplate, Renderer, Segment, load_template
from sftkit.templates.compiled import PROBE_CONTENTS, normal_form, shape
from sftkit.templates.hf import _to_hf
from sftkit.templates.inline import lower

TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
]
CALL = [{"name": "weather", "arguments": {"city": "北京"}}]

CONVS = {
    "single": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}],
    "system_zh": [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "今天天气怎么样？"},
        {"role": "assistant", "content": "晴天，气温二十五度。☀️"},
    ],
    "multi_emoji": [
        {"role": "user", "content": "emoji: 👍🏽👨‍👩‍👧 🤡"},
        {"role": "assistant", "content": "😊 got it"},
        {"role": "user", "content": "  spaces  \n"},
        {"role": "assistant", "content": "ok\n"},
        {"role": "user", "content": "third"},
        {"role": "assistant", "content": "third reply"},
    ],
    "empty_and_markup": [
        {"role": "system", "content": ""},
        {"role": "user", "content": "{{ not jinja }} <|im_end|> literal"},
        {"role": "assistant", "content": ""},
    ],
    "ends_on_user": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
    "two_users": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ],
    "late_system": [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "b"},
    ],
    "named": [{"role": "user", "content": "hi", "name": "alice"}, {"role": "assistant", "content": "hey"}],
    "reasoning": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning": "two plus two is four"},
    ],
    "tool_call": [
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": "", "tool_calls": CALL},
        {"role": "tool", "content": '{"temp": 25}', "name": "weather"},
        {"role": "assistant", "content": "25 度。"},
    ],
}


def _conv(case: str) -> Conversation:
    msgs = CONVS[case]
    return Conversation.from_messages(msgs, tools=TOOLS if case == "tool_call" else None, source=f"t.jsonl:{case}")


def _outputs(r: Renderer, conv: Conversation) -> tuple:
    out = r.render(conv)
    return out.input_ids, out.labels, out.text, r.prompt_text(conv)


def _assert_identical(tok, conv: Conversation, template: HFChatTemplate, reference: HFChatTemplate) -> None:
    for policy in MaskPolicy:
        fast, ref = Renderer(template, tok, policy), Renderer(reference, tok, policy)
        first, second, want = _outputs(fast, conv), _outputs(fast, conv), _outputs(ref, conv)
        assert first == want and second == want, (policy, conv.source)


@pytest.mark.parametrize("case", sorted(CONVS))
def test_bundled_template_identical_to_jinja(tokenizer, case: str) -> None:
    conv = _conv(case)
    fast = HFChatTemplate(tokenizer)
    assert fast.compiled is not None
    _assert_identical(tokenizer, conv, fast, HFChatTemplate(tokenizer, compile=False))
    ids = Renderer(fast, tokenizer).render(conv).input_ids
    # the tokenizer's own rendering of the row, once the fields its template ignores are inline
    low = lower(conv, fast.support)
    want = tokenizer.apply_chat_template(_to_hf(low, len(low.messages)), tools=low.tools, return_dict=True)
    assert ids == list(want["input_ids"])


def test_bundled_template_compiles_to_its_wrappers(tokenizer) -> None:
    spec = HFChatTemplate(tokenizer).compiled.spec  # type: ignore[union-attr]
    assert spec.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert spec.turns["user"].open == "<|im_start|>user\n" and spec.turns["assistant"].close == "<|im_end|>\n"
    assert spec.stop_strings == ["<|im_end|>"]


def test_plain_shapes_use_the_compiled_form_and_others_jinja(tokenizer) -> None:
    t = HFChatTemplate(tokenizer)
    r = Renderer(t, tokenizer)
    for _ in range(3):
        r.render(_conv("multi_emoji"))
        r.render(_conv("reasoning"))  # the template ignores reasoning: written inline, then a plain row
    # each shape's first row goes through Jinja (and proves the compiled form on it), the rest compiled
    assert t.stats == {"compiled": 4, "jinja": 2}


def _generated(n: int, seed: int = 1) -> list[Conversation]:
    rng = random.Random(seed)
    words = ["data", "模型", "训练", "😊", "🚀", "the", "reply", " ", "\n", "<|im_end|>", "{%", "你好"]
    out = []
    for k in range(n):
        msgs = [{"role": "system", "content": "".join(rng.choices(words, k=5))}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": "".join(rng.choices(words, k=rng.randint(0, 12)))})
            msgs.append({"role": "assistant", "content": "".join(rng.choices(words, k=rng.randint(0, 30)))})
        out.append(Conversation.from_messages(msgs, source=f"gen.jsonl:{k + 1}"))
    return out


def test_render_all_identical_on_generated_rows(tokenizer) -> None:
    convs = _generated(3000)  # several chunks of the render_many pipeline
    fast = HFChatTemplate(tokenizer)
    a, rej_a = render_all(Renderer(fast, tokenizer, cutoff_len=64), convs)
    b, rej_b = render_all(Renderer(HFChatTemplate(tokenizer, compile=False), tokenizer, cutoff_len=64), convs)
    assert [(x.input_ids, x.labels, x.text, x.truncated) for x in a] == [
        (x.input_ids, x.labels, x.text, x.truncated) for x in b
    ]
    assert [r.to_dict() for r in rej_a] == [r.to_dict() for r in rej_b]
    assert fast.stats["compiled"] > 2900


# -- other Jinja templates ------------------------------------------------------

LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
TOOL_AWARE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}Tools: {% for t in tools %}{{ t | tojson }}{% endfor %}<|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'system' and loop.first %}{% elif m['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{{ m['content'] }}{% for c in m.get('tool_calls') or [] %}<tool_call>"
    "{{ c['function']['name'] }} {{ c['function']['arguments'] | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>{{ m['content'] }}</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMED_SPEAKERS = (  # renders a `name` the compiled form ignores: only rows without names may use it
    "{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m.get('name') %} ({{ m['name'] }}){% endif %}"
    "{{ '\\n' + m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEN_PROMPT_DIFFERS = (  # trim_blocks eats the newline after a role in the history but not in the generation prompt
    "{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m.get('name') %} ({{ m['name'] }}){% endif %}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LATE_SYSTEM_DIFFERENT = (  # a system message after the first turn renders differently: not in the probe set
    "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}<|im_start|>user\n[system] "
    "{{ m['content'] }}<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRIMS = (  # changes the content: never compiled
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EMPTY_SPECIAL = (  # branches on an empty content: never compiled
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] %}{{ m['content'] }}{% else %}(empty)"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYSTEM_IN_USER = (  # folds the system prompt into the first user turn: no fixed per-role wrapper
    "{% for m in messages %}{% if m['role'] == 'system' %}{% elif m['role'] == 'user' %}[INST] "
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "{{ m['content'] }} [/INST]{% else %} {{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
)


def _with_template(tokenizer, jinja: str):
    tok = copy.copy(tokenizer)
    tok.chat_template = jinja
    return tok


@pytest.mark.parametrize("jinja", [LLAMA3_LIKE, TOOL_AWARE, NAMED_SPEAKERS, LATE_SYSTEM_DIFFERENT])
@pytest.mark.parametrize("case", sorted(CONVS))
def test_other_templates_identical_to_jinja(tokenizer, jinja: str, case: str) -> None:
    tok = _with_template(tokenizer, jinja)
    fast = HFChatTemplate(tok)
    assert fast.compiled is not None
    _assert_identical(tok, _conv(case), fast, HFChatTemplate(tok, compile=False))


def test_llama3_like_template_compiles_with_bos(tokenizer) -> None:
    spec = HFChatTemplate(_with_template(tokenizer, LLAMA3_LIKE)).compiled.spec  # type: ignore[union-attr]
    assert spec.bos == tokenizer.bos_token and spec.default_system is None
    assert spec.turns["assistant"].open == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_a_shape_the_compiled_form_gets_wrong_stays_on_jinja(tokenizer) -> None:
    t = HFChatTemplate(_with_template(tokenizer, LATE_SYSTEM_DIFFERENT))
    late = _conv("late_system")
    for _ in range(3):
        t.segments(late)
    assert t.stats == {"compiled": 0, "jinja": 3}
    assert "[system] be brief" in "".join(s.text for s in t.segments(late))


def test_tool_rows_of_a_tool_template_go_through_jinja(tokenizer) -> None:
    t = HFChatTemplate(_with_template(tokenizer, TOOL_AWARE))
    text = "".join(s.text for s in t.segments(_conv("tool_call")))
    assert '<tool_call>weather {"city": "北京"}</tool_call>' in text and "Tools: " in text
    assert "".join(s.text for s in t.segments(_conv("tool_call"))) == text
    assert t.stats["compiled"] == 0


@pytest.mark.parametrize("jinja", [TRIMS, EMPTY_SPECIAL, SYSTEM_IN_USER])
def test_content_sensitive_or_irregular_templates_are_not_compiled(tokenizer, jinja: str) -> None:
    tok = _with_template(tokenizer, jinja)
    t = HFChatTemplate(tok)
    assert t.compiled is None
    conv = Conversation.from_messages(CONVS["multi_emoji"])
    want = tok.apply_chat_template(_to_hf(conv, len(conv.messages)), tokenize=False)
    assert "".join(s.text for s in t.segments(conv)) == want


def test_a_generation_prompt_unlike_the_history_is_not_compiled(tokenizer) -> None:
    t = HFChatTemplate(_with_template(tokenizer, GEN_PROMPT_DIFFERS))
    assert t.compiled is None
    with pytest.raises(TemplateError, match="rewrites earlier turns"):
        t.segments(Conversation.from_messages(CONVS["single"]))


def test_jinja_file_template_is_compiled_too(tokenizer, tmp_path) -> None:
    path = tmp_path / "llama3.jinja"
    path.write_text(LLAMA3_LIKE, encoding="utf-8")
    t = load_template(str(path), tokenizer)
    assert isinstance(t, HFChatTemplate) and t.compiled is not None


# -- helpers --------------------------------------------------------------------


def test_normal_form_merges_prompt_segments_only() -> None:
    segs = [
        Segment("a", "prompt", 0),
        Segment("b", "prompt", None),
        Segment("c", "reply", 1),
        Segment("", "prompt", None),
        Segment("d", "reply", 3),
    ]
    assert normal_form(segs) == [("prompt", None, "ab"), ("reply", 1, "c"), ("reply", 3, "d")]


def test_shape_ignores_texts_but_not_structure() -> None:
    a = Conversation.from_messages(CONVS["single"])
    b = Conversation.from_messages([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    c = Conversation.from_messages([{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}])
    assert shape(a, False) == shape(b, False) != shape(b, True)
    assert shape(b, False) != shape(c, False)


def test_probe_contents_cover_what_templates_special_case() -> None:
    assert "" in PROBE_CONTENTS and any(c != c.strip() for c in PROBE_CONTENTS)
    assert any("<think>" in c for c in PROBE_CONTENTS) and json.dumps(PROBE_CONTENTS, ensure_ascii=False)
