"""Contract check: does a template, with this tokenizer, train what inference will see?

Run before every training run. Each finding names one property; a failure
means training would silently teach the model something inference cannot use
(a reply that never learns to stop, a prompt that differs from the training
prefix, a row with nothing to learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sftkit.core.conversation import Conversation
from sftkit.core.errors import TemplateError
from sftkit.core.vocab import MaskPolicy
from sftkit.templates.base import ChatTemplate, Segment
from sftkit.templates.inline import needs_lowering
from sftkit.templates.render import IGNORE, Rendered, Renderer

Status = Literal["ok", "warn", "fail"]
_MAX_EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    message: str

    @property
    def ok(self) -> bool:
        return self.status != "fail"


@dataclass(slots=True)
class CheckReport:
    template: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "ok": self.ok,
            "findings": [{"check": f.check, "status": f.status, "message": f.message} for f in self.findings],
        }


def _where(conv: Conversation, k: int) -> str:
    return conv.source or f"conversation #{k}"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer([text], add_special_tokens=False)["input_ids"][0])


def _summary(check: str, bad: list[str], ok_msg: str, what: str, fix: str) -> Finding:
    if not bad:
        return Finding(check, "ok", ok_msg)
    more = f" (+{len(bad) - _MAX_EXAMPLES} more)" if len(bad) > _MAX_EXAMPLES else ""
    return Finding(check, "fail", f"{what}: {'; '.join(bad[:_MAX_EXAMPLES])}{more}. {fix}")


def check_template(
    template: ChatTemplate,
    tokenizer: Any,
    convs: Sequence[Conversation],
    generation_config: Any = None,
    policy: MaskPolicy = MaskPolicy.assistant,
) -> CheckReport:
    """Check ``template`` with ``tokenizer`` on sample conversations (chat rows only)."""
    report = CheckReport(getattr(template, "name", "template"))
    renderer = Renderer(template, tokenizer, policy=policy)
    chats, errors = [], []
    for k, c in enumerate(convs):
        if c.is_text:
            continue
        try:
            chats.append((k, c, renderer.text_segments(c), renderer.render(c)))
        except TemplateError as e:
            errors.append(f"{_where(c, k)}: {e}")
    report.findings.append(
        _summary(
            "renders", errors, f"{len(chats)} conversation(s) render", "cannot render", "Fix the rows or template."
        )
    )
    report.findings.append(_content_rendered(chats))
    notes = getattr(template, "notes", "")
    if notes and any(needs_lowering(c, template.support) for _, c, _, _ in chats):  # type: ignore[attr-defined]
        report.findings.append(Finding("inlined", "warn", f"{notes}: inference must use the same sftkit "
                                       "template (sft chat/serve/eval do) so prompts match the training text"))
    report.findings.append(_stop_tokens(template, tokenizer, generation_config))
    report.findings.append(_bos(tokenizer, chats))
    report.findings.append(_eot_trained(template, tokenizer, chats, policy))
    report.findings.extend(_prompt_prefix(renderer, tokenizer, chats))
    empty = [_where(c, k) for k, c, _, r in chats if r.n_trainable == 0]
    report.findings.append(
        _summary(
            "trainable",
            empty,
            "every conversation has trainable tokens",
            "no trainable token",
            "These rows have no assistant reply under this mask policy; add one or drop the rows.",
        )
    )
    return report


Chat = tuple[int, Conversation, list[Segment], Rendered]


def _content_rendered(chats: list[Chat]) -> Finding:
    """Every message's text, thinking block and tool call reaches the rendering: a template that
    drops a field would train the model on replies without it."""
    bad = []
    for k, c, _, r in chats:
        for i, m in enumerate(c.messages):
            parts = [("content", m.content), ("reasoning", m.reasoning or "")]
            parts += [("tool call", str(t.get("name") or "")) for t in m.tool_calls or []]
            lost = [what for what, x in parts if x.strip() and x.strip() not in r.text]
            if lost:
                bad.append(f"{_where(c, k)} message {i} ({m.role}): {', '.join(lost)} not rendered")
    return _summary("content_rendered", bad, "every message's content, reasoning and tool calls are rendered",
                    "the template drops data", "Use a template that renders these fields (`template:`), "
                    "or remove them from the rows.")


def _stop_tokens(template: ChatTemplate, tokenizer: Any, generation_config: Any) -> Finding:
    stops = template.stop_strings
    ids: dict[str, int] = {}
    split = []
    for s in stops:
        t = _ids(tokenizer, s)
        if len(t) == 1:
            ids[s] = t[0]
        else:
            split.append(f"{s!r} is {len(t)} tokens")
    if split:
        return Finding(
            "stop_tokens",
            "fail",
            f"stop strings are not single tokens in this tokenizer ({'; '.join(split)}); the template is "
            "probably for another model family, pick the one matching the model",
        )
    if generation_config is None:
        return Finding("stop_tokens", "warn", "no generation_config given: eos_token_id coverage not checked")
    eos = (
        generation_config.get("eos_token_id")
        if isinstance(generation_config, dict)
        else getattr(generation_config, "eos_token_id", None)
    )
    have = set(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])
    missing = [f"{s!r} (id {i})" for s, i in ids.items() if i not in have]
    if missing:
        return Finding(
            "stop_tokens",
            "fail",
            f"generation_config.eos_token_id={sorted(have)} lacks {', '.join(missing)}: generation would run past "
            "the end of a turn; add these ids to eos_token_id in generation_config.json",
        )
    return Finding("stop_tokens", "ok", f"generation stops on every stop string ({', '.join(map(repr, ids))})")


def _bos(tokenizer: Any, chats: list[Chat]) -> Finding:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return Finding("bos", "ok", "the tokenizer has no BOS token")
    bad = [_where(c, k) for k, c, _, r in chats if len(r.input_ids) >= 2 and r.input_ids[0] == r.input_ids[1] == bos]
    return _summary(
        "bos",
        bad,
        "no doubled BOS at the start",
        "BOS appears twice at the start",
        "Both the data and the template add it; remove BOS text from the data (or `bos` from the template).",
    )


def _trained_replies(segs: list[Segment], policy: MaskPolicy) -> list[tuple[int, Segment]]:
    """(start char, segment) of each reply the policy trains."""
    out, pos = [], 0
    last = max((s.message_index for s in segs if s.kind == "reply" and s.message_index is not None), default=None)
    for s in segs:
        if s.kind == "reply" and (policy is not MaskPolicy.last or s.message_index == last):
            out.append((pos, s))
        pos += len(s.text)
    return out


def _eot_trained(template: ChatTemplate, tokenizer: Any, chats: list[Chat], policy: MaskPolicy) -> Finding:
    stops = [*template.stop_strings, getattr(tokenizer, "eos_token", None) or ""]
    bad: list[str] = []
    for k, c, segs, r in chats:
        offsets = tokenizer([r.text], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][0]
        for start, seg in _trained_replies(segs, policy):
            hits = [(seg.text.rfind(t), t) for t in stops if t and t in seg.text]
            if not hits:
                bad.append(f"{_where(c, k)} message {seg.message_index}: reply has no end-of-turn string")
                continue
            at, t = max(hits)
            a, b = start + at, start + at + len(t)
            covering = [j for j, (x, y) in enumerate(offsets) if x < b and y > a]
            if not covering or any(r.labels[j] == IGNORE for j in covering):
                bad.append(f"{_where(c, k)} message {seg.message_index}: {t!r} is not trained")
    return _summary(
        "eot_trained",
        bad,
        "the end-of-turn token closing every trained reply is trained",
        "end of turn not trained",
        "The model would never learn to stop; make each reply end with one of the template's stop_strings.",
    )


def _prompt_prefix(renderer: Renderer, tokenizer: Any, chats: list[Chat]) -> list[Finding]:
    text_bad: list[str] = []
    token_bad: list[str] = []
    for k, c, _, r in chats:
        if c.last_assistant_index() != len(c.messages) - 1:
            continue
        prompt = renderer.prompt_text(c)
        if not r.text.startswith(prompt):
            text_bad.append(_where(c, k))
        elif r.input_ids[: len(p := _ids(tokenizer, prompt))] != p:
            token_bad.append(_where(c, k))
    out = [
        _summary(
            "prompt_prefix",
            text_bad,
            "the inference prompt is a prefix of every training rendering",
            "the inference prompt differs from the training text",
            "The template renders history differently with a generation prompt; fix the template.",
        )
    ]
    if token_bad:
        out.append(
            Finding(
                "prompt_tokens",
                "warn",
                f"the prompt tokenizes differently alone than inside the training text ({', '.join(token_bad[:3])}): "
                "the first reply token sees a different context at inference",
            )
        )
    return out
