"""Preference rows rendered with the run's template: prompt + reply ids share the prompt token for token."""

from __future__ import annotations

import json

import pytest

from chartok import CharTokenizer
from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import RowRejected, TemplateError
from sftkit.data.preference import Feedback, PreferencePair, load_preference_file, render_preference
from sftkit.templates import IGNORE, JSONTemplate, MaskPolicy, Overflow, Renderer, Segment, load_template
from sftkit.templates.pairs import RenderedFeedback, RenderedPair, budget, render_feedback, render_pairs


def pair(prompt: list[tuple[str, str]], chosen: str, rejected: str, source: str = "rows.jsonl:1") -> PreferencePair:
    conv = Conversation.from_messages([{"role": r, "content": c} for r, c in prompt], source=source)
    return PreferencePair(conv, Message("assistant", chosen), Message("assistant", rejected), source)


ROWS = [
    pair([("user", "What is 2 + 2?")], "2 + 2 = 4.", "It is five, I think."),
    pair([("system", "Answer briefly."), ("user", "Name a colour.")], "Blue.", "I would rather not."),
    pair(
        [("user", "你好，请介绍一下长城。"), ("assistant", "长城是中国古代的军事防御工程。"), ("user", "它有多长？")],
        "长城总长约两万一千公里。",
        "很长。",
    ),
    pair([("system", "你是一位中医助手。"), ("user", "失眠怎么办？")], "可以先调整作息，睡前避免咖啡因。", "不知道"),
]


def check_shared_prefix(renderer: Renderer, rows: list[PreferencePair], out: list[RenderedPair]) -> None:
    """prompt_ids is the inference prompt's tokens; prompt_ids + reply_ids is the start of the whole
    rendering (one tokenization), and what follows the reply is only text after its end of turn."""
    last = Renderer(renderer.template, renderer.tokenizer, MaskPolicy.last)
    tok = renderer.tokenizer
    prompts = tok([last.prompt_text(row.prompt) for row in rows], add_special_tokens=False)["input_ids"]
    sides = [("chosen", row.chosen) for row in rows] + [("rejected", row.rejected) for row in rows]
    fulls = last.render_many(
        [
            Conversation([*row.prompt.messages, reply], tools=row.prompt.tools)
            for row, (_, reply) in zip(rows + rows, sides, strict=True)
        ]
    )
    stop = renderer.template.stop_strings[0]
    for k, (full, (side, _)) in enumerate(zip(fulls, sides, strict=True)):
        r = out[k % len(rows)]
        assert isinstance(r, RenderedPair), r
        assert r.prompt_ids == list(prompts[k % len(rows)])
        ids, labels = r.sequence(side)
        assert full.input_ids[: len(ids)] == ids
        assert full.labels[: len(ids)] == labels  # the prompt masked, the reply trained, as SFT's last policy
        assert all(x == IGNORE for x in full.labels[len(ids) :])  # only untrained text after the reply
        assert tok.decode(ids[len(r.prompt_ids) :]).endswith(stop)


@pytest.mark.parametrize("template", ["auto", "qwen2_chatml"])
def test_shared_prefix_on_english_and_chinese_rows(tokenizer, template) -> None:
    renderer = Renderer(load_template(template, tokenizer), tokenizer)
    out = render_pairs(ROWS, renderer)
    check_shared_prefix(renderer, ROWS, out)
    assert tokenizer.decode(out[0].chosen_ids) == "2 + 2 = 4.<|im_end|>"  # no newline after the end of turn


@pytest.mark.parametrize(("template", "name"), [("auto", "dpo_zh_demo.json"), ("qwen2_chatml", "dpo_en_demo.json")])
def test_shared_prefix_on_every_llamafactory_demo_pair(shared_data, tokenizer, template, name) -> None:
    renderer = Renderer(load_template(template, tokenizer), tokenizer)
    rows = load_preference_file(shared_data / "peers" / name).rows
    check_shared_prefix(renderer, rows, render_pairs(rows, renderer))


def test_readable_ids_with_a_character_tokenizer() -> None:
    tok = CharTokenizer()
    r = render_pairs([pair([("user", "hi")], "yes", "no")], Renderer(load_template("chatml"), tok))[0]
    assert tok.decode(r.prompt_ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (tok.decode(r.chosen_ids), tok.decode(r.rejected_ids)) == ("yes<|im_end|>", "no<|im_end|>")
    assert r.to_row() == {"prompt_ids": r.prompt_ids, "chosen_ids": r.chosen_ids, "rejected_ids": r.rejected_ids}
    ids, labels = r.sequence("rejected")
    assert tok.trained_text(labels) == "no<|im_end|>" and ids == r.prompt_ids + r.rejected_ids


# --- rows the template renders differently for the two sides ---------------------------------


class ReplyAwareTemplate:
    """ChatML that adds a system turn when the final reply apologises: the prompt the model saw
    would then depend on the reply it is about to write."""

    name = "reply_aware"

    def __init__(self) -> None:
        self.base = load_template("chatml")

    @property
    def stop_strings(self) -> list[str]:
        return self.base.stop_strings

    def segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
        segs = self.base.segments(conv, add_generation_prompt)
        if conv.messages and conv.messages[-1].role == "assistant" and "sorry" in conv.messages[-1].content:
            return [Segment("<|im_start|>system\nApologise.<|im_end|>\n", "prompt", None), *segs]
        return segs


def test_prompt_rendered_according_to_the_reply_is_a_reject(tokenizer) -> None:
    renderer = Renderer(ReplyAwareTemplate(), tokenizer)
    ok, bad = render_pairs([pair([("user", "hi")], "hello", "bye"), pair([("user", "hi")], "hello", "sorry")], renderer)
    assert isinstance(ok, RenderedPair)
    assert isinstance(bad, RowRejected)
    assert str(bad).startswith(
        "prompt renders differently: with the rejected reply the text before it differs "
        "from the inference prompt at character 12 ('system"
    )


def test_generation_prompt_merging_with_the_reply_is_a_reject(tokenizer) -> None:
    # "Assistant: " ends in a space the English reply's first token absorbs (" Hello"); these Chinese ones do not
    spec = {
        "name": "colon",
        "stop_strings": ["<|im_end|>"],
        "turns": {
            "system": {"open": "System: ", "close": "\n"},
            "user": {"open": "User: ", "close": "\n"},
            "assistant": {"open": "Assistant: ", "close": "<|im_end|>\n"},
        },
    }
    renderer = Renderer(JSONTemplate.from_dict(spec), tokenizer)
    en, zh = render_pairs(
        [pair([("user", "hi")], "Hello there", "Go away"), pair([("user", "你好")], "你好", "不")], renderer
    )
    assert isinstance(en, RowRejected)
    assert str(en).startswith("prompt renders differently: with the chosen reply the tokens differ")
    assert "end the template's generation prompt at a token boundary" in str(en)
    assert isinstance(zh, RenderedPair) and tokenizer.decode(zh.prompt_ids).endswith("Assistant: ")


def test_unrenderable_prompt_is_a_reject() -> None:
    class Broken(ReplyAwareTemplate):
        def segments(self, conv, add_generation_prompt=False):
            if add_generation_prompt:
                raise TemplateError("no generation prompt in this template")
            return super().segments(conv, add_generation_prompt)

    out = render_pairs([pair([("user", "hi")], "a", "b")], Renderer(Broken(), CharTokenizer()))
    assert str(out[0]) == "cannot render the prompt: no generation prompt in this template"


# --- cutoff_len ------------------------------------------------------------------------------


def test_budget_puts_the_reply_first() -> None:
    assert budget(100, 5, 50) == (45, 5)  # a short reply is kept whole, the prompt gets the rest
    assert budget(5, 100, 50) == (5, 45)  # a short prompt is kept whole, the reply gets the rest
    assert budget(60, 40, 50) == (30, 20)  # both long: shares in proportion to their lengths
    assert budget(3, 4, 50) == (3, 4)


def test_truncation_keeps_the_end_of_the_prompt() -> None:
    tok = CharTokenizer()
    renderer = Renderer(load_template("chatml"), tok, cutoff_len=40)
    r = render_pairs([pair([("user", "abcdefghijklmnopqrstuvwxyz")], "yes", "no!")], renderer)[0]
    assert r.truncated and len(r.prompt_ids) + len(r.chosen_ids) == 40  # the prompt's first 9 tokens were dropped
    assert tok.decode(r.prompt_ids) == "defghijklmnopqrstuvwxyz<|im_end|>\n<|im_start|>assistant\n"
    assert (tok.decode(r.chosen_ids), tok.decode(r.rejected_ids)) == ("yes<|im_end|>", "no!<|im_end|>")


def test_truncation_cuts_both_replies_to_the_same_length_and_keeps_bos() -> None:
    tok = CharTokenizer(bos_token="<s>")
    spec = json.loads(json.dumps(load_template("chatml").spec.model_dump()))
    spec["bos"] = "<s>"
    renderer = Renderer(JSONTemplate.from_dict(spec), tok, cutoff_len=30)
    r = render_pairs([pair([("user", "0123456789" * 3)], "A" * 40, "B" * 10)], renderer)[0]
    prompt, chosen = tok.decode(r.prompt_ids), tok.decode(r.chosen_ids)
    assert prompt.startswith("<s>") and prompt.endswith("<|im_start|>assistant\n") and "<s><|im_start|>" not in prompt
    assert len(r.prompt_ids) + len(r.chosen_ids) == 30 and chosen == "A" * len(r.chosen_ids)
    assert tok.decode(r.rejected_ids) == "B" * 10 + "<|im_end|>"  # already short enough: kept whole


def test_overflow_drop_and_error() -> None:
    rows = [pair([("user", "x" * 50)], "yes", "no", "rows.jsonl:4")]
    tok = CharTokenizer()
    dropped = render_pairs(rows, Renderer(load_template("chatml"), tok, cutoff_len=20, overflow=Overflow.drop))[0]
    assert str(dropped) == ("too long: dropped, prompt 69 + reply 4 tokens exceed cutoff_len=20 (overflow: drop)")
    with pytest.raises(TemplateError, match=r"rows\.jsonl:4: prompt 69 \+ reply 4 tokens exceed cutoff_len=20"):
        render_pairs(rows, Renderer(load_template("chatml"), tok, cutoff_len=20, overflow=Overflow.error))
    fits = render_pairs(rows, Renderer(load_template("chatml"), tok), cutoff_len=73, overflow=Overflow.drop)[0]
    assert isinstance(fits, RenderedPair) and not fits.truncated


# --- KTO and the whole path from a file -----------------------------------------------------


def test_feedback_rows_render_with_their_label(tokenizer) -> None:
    prompt = ROWS[2].prompt
    items = [
        Feedback(prompt, Message("assistant", "约两万公里。"), True, "k.jsonl:1"),
        Feedback(prompt, Message("assistant", "不知道"), False, "k.jsonl:2"),
    ]
    renderer = Renderer(load_template("qwen2_chatml"), tokenizer)
    good, bad = render_feedback(items, renderer)
    assert isinstance(good, RenderedFeedback) and (good.label, bad.label) == (True, False)
    assert good.prompt_ids == bad.prompt_ids
    assert tokenizer.decode(bad.completion_ids) == "不知道<|im_end|>"
    assert bad.to_row() == {"prompt_ids": bad.prompt_ids, "completion_ids": bad.completion_ids, "label": False}
    full = Renderer(renderer.template, tokenizer, MaskPolicy.last).render(
        Conversation([*prompt.messages, items[0].completion])
    )
    assert full.input_ids[: len(good.prompt_ids) + len(good.completion_ids)] == good.prompt_ids + good.completion_ids


def test_render_preference_reports_every_dropped_row(tmp_path, tokenizer) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "hi", "chosen": "hello", "rejected": "sorry"},
        {"prompt": "hi", "chosen": "hello", "rejected": "bye"},
        {"prompt": "long " * 200, "chosen": "a", "rejected": "b"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    loaded = load_preference_file(path)
    renderer = Renderer(ReplyAwareTemplate(), tokenizer, cutoff_len=64, overflow=Overflow.drop)
    kept, rejects = render_preference(loaded.rows, renderer)
    assert [k.source for k in kept] == [f"{path}:2"]
    assert [(r.file, r.line, r.reason.split(":")[0]) for r in rejects] == [
        (str(path), 1, "prompt renders differently"), (str(path), 3, "too long")]  # fmt: skip
    assert json.loads(rejects[0].raw)["rejected"] == [{"role": "assistant", "content": "sorry"}]


def test_trl_collators_take_the_rows(tokenizer) -> None:
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    renderer = Renderer(load_template("auto", tokenizer), tokenizer)
    out = render_pairs(ROWS[:2], renderer)
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)([r.to_row() for r in out])
    for i, (r, side) in enumerate(
        [(out[0], "chosen"), (out[1], "chosen"), (out[0], "rejected"), (out[1], "rejected")]
    ):  # chosen rows first, then rejected
        ids, labels = r.sequence(side)
        n = len(ids)
        assert batch["input_ids"][i, :n].tolist() == ids
        assert batch["completion_mask"][i, :n].tolist() == [int(x != IGNORE) for x in labels]
    fb = render_feedback(
        [Feedback(ROWS[0].prompt, ROWS[0].chosen, True), Feedback(ROWS[0].prompt, ROWS[0].rejected, False)], renderer
    )
    kto = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id)([f.to_row() for f in fb])
    assert kto["label"].tolist() == [True, False]
    assert kto["completion_mask"][1].sum().item() == len(fb[1].completion_ids)
