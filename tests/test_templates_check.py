"""The contract check: good templates pass, each kind of breakage fails with its finding."""

from __future__ import annotations

from chartok import CharTokenizer
from sftkit.core.conversation import Conversation
from sftkit.templates import CheckReport, JSONTemplate, Segment, check_template, load_template

CONVS = [
    Conversation.from_messages(
        [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}], source="a.jsonl:1"
    ),
    Conversation.from_messages(
        [
            {"role": "system", "content": "简短回答。"},
            {"role": "user", "content": "你好 😊"},
            {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "ok"},
        ],
        source="a.jsonl:2",
    ),
]
GEN = {"eos_token_id": 2}


def _status(report: CheckReport) -> dict[str, str]:
    return {f.check: f.status for f in report.findings}


def _chatml(**over) -> JSONTemplate:
    spec = {
        "name": "custom",
        "stop_strings": ["<|im_end|>"],
        "turns": {r: {"open": f"<|im_start|>{r}\n", "close": "<|im_end|>\n"} for r in ("system", "user", "assistant")},
    }
    spec.update(over)
    return JSONTemplate.from_dict(spec)


def test_bundled_tokenizer_own_template_passes(tokenizer) -> None:
    report = check_template(load_template("auto", tokenizer), tokenizer, CONVS, GEN)
    assert report.ok, report.to_dict()
    assert report.failures == []
    assert set(_status(report)) >= {"renders", "stop_tokens", "bos", "eot_trained", "prompt_prefix", "trainable"}


def test_shipped_chatml_passes_with_bundled_tokenizer(tokenizer) -> None:
    assert check_template(load_template("chatml"), tokenizer, CONVS, GEN).ok
    # qwen2 also stops on <|endoftext|>: the generation config must list it too.
    qwen = load_template("qwen2_chatml")
    assert [f.check for f in check_template(qwen, tokenizer, CONVS, GEN).failures] == ["stop_tokens"]
    assert check_template(qwen, tokenizer, CONVS, {"eos_token_id": [2, 0]}).ok


def test_template_of_another_family_fails_stop_tokens(tokenizer) -> None:
    report = check_template(load_template("llama3_instruct"), tokenizer, CONVS, GEN)
    assert not report.ok
    assert _status(report)["stop_tokens"] == "fail"
    assert "'<|eot_id|>' is" in report.failures[0].message


def test_generation_config_missing_the_stop_token_fails(tokenizer) -> None:
    report = check_template(load_template("chatml"), tokenizer, CONVS, {"eos_token_id": [0]})
    assert [f.check for f in report.failures] == ["stop_tokens"]
    assert "lacks '<|im_end|>' (id 2)" in report.failures[0].message


def test_no_generation_config_is_a_warning(tokenizer) -> None:
    report = check_template(load_template("chatml"), tokenizer, CONVS)
    assert report.ok and _status(report)["stop_tokens"] == "warn"


def test_reply_without_end_of_turn_fails() -> None:
    broken = _chatml(turns={"system": {}, "user": {"open": "U:", "close": "\n"}, "assistant": {"close": "\n"}})
    tok = CharTokenizer(eos_token="</s>")
    report = check_template(broken, tok, CONVS, {"eos_token_id": [tok.vocab["<|im_end|>"]]})
    assert [f.check for f in report.failures] == ["eot_trained"]
    assert "a.jsonl:1 message 1: reply has no end-of-turn string" in report.failures[0].message


class EotOutsideReply:
    """Deliberately broken: the end-of-turn token sits in the *next* prompt segment."""

    name = "eot-outside"
    stop_strings = ("<|im_end|>",)

    def segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
        segs = []
        for i, m in enumerate(conv.messages):
            kind = "reply" if m.role == "assistant" else "prompt"
            head = f"<|im_start|>{m.role}\n"
            segs += [Segment(head, "prompt", i), Segment(m.content, kind, i), Segment("<|im_end|>\n", "prompt", i)]
        if add_generation_prompt:
            segs.append(Segment("<|im_start|>assistant\n", "prompt", None))
        return segs


def test_untrained_end_of_turn_fails() -> None:
    tok = CharTokenizer()
    report = check_template(EotOutsideReply(), tok, CONVS, {"eos_token_id": tok.eos_token_id})
    assert [f.check for f in report.failures] == ["eot_trained"]


class DriftingPrompt(EotOutsideReply):
    """Deliberately broken: the generation prompt is not what training shows before a reply."""

    def segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
        segs = []
        for i, m in enumerate(conv.messages):
            kind = "reply" if m.role == "assistant" else "prompt"
            segs += [Segment(f"<|im_start|>{m.role}\n", "prompt", i), Segment(m.content + "<|im_end|>\n", kind, i)]
        if add_generation_prompt:
            segs.append(Segment("<|im_start|>assistant\n\n", "prompt", None))
        return segs


def test_prompt_that_is_not_the_training_prefix_fails() -> None:
    tok = CharTokenizer()
    report = check_template(DriftingPrompt(), tok, CONVS, {"eos_token_id": tok.eos_token_id})
    assert [f.check for f in report.failures] == ["prompt_prefix"]
    assert "a.jsonl:1; a.jsonl:2" in report.failures[0].message


def test_doubled_bos_fails() -> None:
    tok = CharTokenizer(eos_token="</s>", bos_token="<s>")
    doubled = JSONTemplate.from_dict(
        {
            "name": "double-bos",
            "bos": "<s>",
            "stop_strings": ["</s>"],
            "system_placement": "first_user",
            "turns": {"user": {"open": "<s>[INST] ", "close": " [/INST]"}, "assistant": {"close": "</s>"}},
        }
    )
    report = check_template(doubled, tok, CONVS, {"eos_token_id": tok.eos_token_id})
    assert [f.check for f in report.failures] == ["bos"]
    ok = check_template(load_template("mistral_instruct"), tok, CONVS, {"eos_token_id": tok.eos_token_id})
    assert ok.ok, ok.to_dict()


def test_rows_with_nothing_to_train_fail(tokenizer) -> None:
    no_reply = Conversation.from_messages([{"role": "user", "content": "only a question"}], source="b.jsonl:3")
    report = check_template(load_template("chatml"), tokenizer, [*CONVS, no_reply], GEN)
    assert [f.check for f in report.failures] == ["trainable"]
    assert "b.jsonl:3" in report.failures[0].message


def test_rows_the_template_cannot_render_fail(tokenizer) -> None:
    tool = Conversation.from_messages(
        [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}, {"role": "assistant", "content": "z"}],
        source="c.jsonl:9",
    )
    report = check_template(load_template("gemma"), CharTokenizer(eos_token="</s>"), [tool])
    assert _status(report)["renders"] == "fail"
    assert "c.jsonl:9" in report.failures[0].message
