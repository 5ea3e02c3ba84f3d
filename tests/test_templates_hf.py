"""The bundled tokenizer: our ids equal ``tokenizer.apply_chat_template`` ids."""

from __future__ import annotations

import json

import pytest

from sftkit.core.conversation import Conversation
from sftkit.core.errors import TemplateError
from sftkit.core.vocab import MaskPolicy
from sftkit.templates import HFChatTemplate, Renderer, load_template

CONVS = {
    "single": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}],
    "system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
    "multi": [
        {"role": "user", "content": "你好，世界"},
        {"role": "assistant", "content": "你好！😊 有什么可以帮你？"},
        {"role": "user", "content": "Tell a joke 🤡"},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ],
    "multi_system": [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "emoji: 👍🏽👨‍👩‍👧"},
        {"role": "assistant", "content": "👍"},
        {"role": "user", "content": "  spaces  \n"},
        {"role": "assistant", "content": "ok\n"},
    ],
}


@pytest.mark.parametrize("case", sorted(CONVS))
@pytest.mark.parametrize("gen", [False, True])
def test_ids_equal_apply_chat_template(tokenizer, case: str, gen: bool) -> None:
    msgs = CONVS[case][:-1] if gen else CONVS[case]
    conv = Conversation.from_messages(msgs)
    r = Renderer(load_template("auto", tokenizer), tokenizer)
    ids = tokenizer(r.prompt_text(conv) if gen else r.render(conv).text, add_special_tokens=False)["input_ids"]
    expected = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True)
    assert ids == list(expected["input_ids"])
    if not gen:
        assert r.render(conv).input_ids == list(expected["input_ids"])


@pytest.mark.parametrize("case", sorted(CONVS))
def test_trained_tokens_are_the_replies(tokenizer, case: str) -> None:
    conv = Conversation.from_messages(CONVS[case])
    r = Renderer(load_template(None, tokenizer), tokenizer).render(conv)
    trained = tokenizer.decode([x for x in r.labels if x != -100])
    replies = [m["content"] + "<|im_end|>" for m in CONVS[case] if m["role"] == "assistant"]
    assert trained == "".join(replies)


def test_json_copy_of_the_bundled_template_gives_identical_ids(tokenizer, tmp_path) -> None:
    """A user JSON file reproducing SmolLM2's template matches the tokenizer's own, id for id."""
    spec = {
        "name": "smollm2",
        "stop_strings": ["<|im_end|>"],
        "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        "turns": {r: {"open": f"<|im_start|>{r}\n", "close": "<|im_end|>\n"} for r in ("system", "user", "assistant")},
    }
    path = tmp_path / "smollm2.json"
    path.write_text(json.dumps(spec))
    ours, theirs = Renderer(load_template(str(path)), tokenizer), Renderer(HFChatTemplate(tokenizer), tokenizer)
    for msgs in CONVS.values():
        conv = Conversation.from_messages(msgs)
        a, b = ours.render(conv), theirs.render(conv)
        assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
        assert ours.prompt_text(conv) == theirs.prompt_text(conv)


def test_jinja_file_template(tokenizer, tmp_path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    t = load_template(str(path), tokenizer)
    conv = Conversation.from_messages(CONVS["single"])
    assert "".join(s.text for s in t.segments(conv)) == (
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    assert "SmolLM" in tokenizer.chat_template  # the caller's tokenizer is untouched
    r = Renderer(t, tokenizer, MaskPolicy.last).render(conv)
    assert tokenizer.decode([x for x in r.labels if x != -100]) == "Hello.<|im_end|>"


def test_registry_errors(tokenizer) -> None:
    with pytest.raises(TemplateError, match=r"unknown template 'nope'.*qwen2_chatml"):
        load_template("nope", tokenizer)
    with pytest.raises(TemplateError, match=r"no chat template.*chatml"):
        load_template("auto", type("T", (), {"chat_template": None})())
    with pytest.raises(TemplateError, match="no tokenizer"):
        load_template(None)
    with pytest.raises(TemplateError, match="does not exist"):
        load_template("missing/t.json")
