"""Preference rows -> the token ids TRL's preference trainers take pre-tokenized.

sftkit renders preference data itself, with the run's template and the same ``Renderer`` as
SFT, instead of letting TRL apply the tokenizer's chat template: TRL's rendering injects
defaults the run's template may not, trains the newline after the end-of-turn token, and
(ORPO/CPO) doubles the EOS. Here:

* **Shared prefix, token for token.** Each reply is rendered as the whole conversation
  prompt + reply, tokenized once (what SFT trains on), and the prompt alone with the
  generation prompt (what inference feeds the model). The row is kept only when the
  rendering with each reply starts with exactly the prompt's tokens; otherwise it is rejected
  with ``prompt renders differently: ...`` (a template that renders the prompt turns
  according to the reply, or a generation prompt whose last token merges with the reply's
  first one). So ``prompt_ids + chosen_ids`` is the full chosen rendering, and the reply ids
  are the ones the model would produce after that very prompt.
* **The reply** runs from the end of the prompt through its end-of-turn token: the labels of
  ``MaskPolicy.last``. Text the template writes after the end of turn (ChatML's newline) is
  not part of it, as in SFT.
* **Truncation** to ``cutoff_len`` (``Overflow``, the SFT setting): ``truncate`` splits the
  budget the way LLaMA-Factory does (replies first: a reply shorter than half the budget is
  kept whole, a prompt shorter than half the budget is kept whole, else each gets a share in
  proportion to its length; both replies are cut to the same length, keeping their start).
  Unlike LLaMA-Factory, which keeps the prompt's *start* and so cuts off the generation
  prompt the reply follows, the prompt keeps its *end* (the turn being answered and the
  assistant header), plus a leading BOS token. The start of a long prompt, including a
  system turn, is what is lost: raise ``cutoff_len`` or use ``drop`` if that matters.
  ``drop`` rejects the row, ``error`` raises. Every cut row is marked ``truncated``.

Results come back in row order, each a rendered row or the ``RowRejected`` that says why not;
``sftkit.data.preference.render_preference`` turns those into ``Reject`` s with file:line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import RowRejected, TemplateBlocked, TemplateError
from sftkit.core.vocab import MaskPolicy, Overflow
from sftkit.templates.render import IGNORE, Rendered, Renderer


class PairLike(Protocol):
    prompt: Conversation
    chosen: Message
    rejected: Message
    source: str | None


class FeedbackLike(Protocol):
    prompt: Conversation
    completion: Message
    desirable: bool
    source: str | None


@dataclass(slots=True)
class RenderedPair:
    """DPO/ORPO/SimPO input: ``prompt_ids + chosen_ids`` is the chosen conversation's tokens."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str | None = None
    truncated: bool = False

    def to_row(self) -> dict[str, list[int]]:
        """The columns ``DPOTrainer`` reads (and the ``tokenize_row`` override of ORPO/CPO)."""
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}

    def sequence(self, side: Literal["chosen", "rejected"]) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of one side, the prompt masked."""
        reply = self.chosen_ids if side == "chosen" else self.rejected_ids
        return self.prompt_ids + reply, [IGNORE] * len(self.prompt_ids) + reply


@dataclass(slots=True)
class RenderedFeedback:
    """KTO input: one reply and whether it is desirable."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    source: str | None = None
    truncated: bool = False

    def to_row(self) -> dict[str, Any]:
        """The columns ``KTOTrainer`` reads (it adds ``KL_completion_ids`` itself)."""
        return {"prompt_ids": self.prompt_ids, "completion_ids": self.completion_ids, "label": self.label}

    def sequence(self) -> tuple[list[int], list[int]]:
        return self.prompt_ids + self.completion_ids, [IGNORE] * len(self.prompt_ids) + self.completion_ids


@dataclass(slots=True)
class _Split:
    prompt_ids: list[int]
    replies: list[list[int]]
    truncated: bool = False


def render_pairs(
    pairs: Sequence[PairLike], renderer: Renderer, cutoff_len: int | None = None, overflow: Overflow | None = None
) -> list[RenderedPair | RowRejected]:
    """Each pair's ids (see the module docstring); ``cutoff_len``/``overflow`` default to the renderer's."""
    split = split_replies(
        renderer,
        [p.prompt for p in pairs],
        [[p.chosen, p.rejected] for p in pairs],
        ("chosen", "rejected"),
        cutoff_len,
        overflow,
    )
    return [
        s if isinstance(s, RowRejected) else RenderedPair(s.prompt_ids, *s.replies, p.source, s.truncated)
        for p, s in zip(pairs, split, strict=True)
    ]


def render_feedback(
    items: Sequence[FeedbackLike], renderer: Renderer, cutoff_len: int | None = None, overflow: Overflow | None = None
) -> list[RenderedFeedback | RowRejected]:
    """Each feedback row's ids, rendered and truncated like a pair with one reply."""
    split = split_replies(
        renderer, [f.prompt for f in items], [[f.completion] for f in items], ("completion",), cutoff_len, overflow
    )
    return [
        s
        if isinstance(s, RowRejected)
        else RenderedFeedback(s.prompt_ids, s.replies[0], f.desirable, f.source, s.truncated)
        for f, s in zip(items, split, strict=True)
    ]


def split_replies(
    renderer: Renderer,
    prompts: Sequence[Conversation],
    replies: Sequence[Sequence[Message]],
    sides: Sequence[str],
    cutoff_len: int | None = None,
    overflow: Overflow | None = None,
) -> list[_Split | RowRejected]:
    """Prompt ids and one id list per reply for each row, all rendered in batches."""
    # MaskPolicy.last: the labels mark exactly the final reply. No cutoff here: a pair is cut as a whole.
    last = Renderer(renderer.template, renderer.tokenizer, MaskPolicy.last)
    cutoff = renderer.cutoff_len if cutoff_len is None else cutoff_len
    policy = renderer.overflow if overflow is None else overflow
    texts, failed = _prompt_texts(last, prompts)
    encoded = last._encode(texts)  # the renderer's own encoder: the ids its renderings are compared to
    fulls = [
        Conversation([*p.messages, m], tools=p.tools, source=p.source)
        for p, ms in zip(prompts, replies, strict=True)
        for m in ms
    ]
    rendered = iter(last.render_many(fulls, errors="return"))
    out: list[_Split | RowRejected] = []
    for i, p in enumerate(prompts):
        own = [next(rendered) for _ in replies[i]]
        if i in failed:
            out.append(failed[i])
            continue
        try:
            ids = [
                _reply_ids(texts[i], encoded[i][0], r, side, last.tokenizer) for r, side in zip(own, sides, strict=True)
            ]
            out.append(fit(encoded[i][0], ids, cutoff, policy, p.source, _bos(last.tokenizer)))
        except RowRejected as e:
            out.append(e)
    return out


def _prompt_texts(renderer: Renderer, prompts: Sequence[Conversation]) -> tuple[list[str], dict[int, RowRejected]]:
    texts, failed = [], {}
    for i, p in enumerate(prompts):
        try:
            texts.append(renderer.prompt_text(Conversation(p.messages, tools=p.tools, source=p.source)))
        except TemplateBlocked:
            raise  # the template is refused: not a bad row
        except Exception as e:  # noqa: BLE001 - any failure to render one row is that row's reject
            failed[i] = RowRejected(f"cannot render the prompt: {e}")
            texts.append("")
    return texts, failed


def _show(tokenizer: Any, ids: list[int]) -> str:
    decode = getattr(tokenizer, "decode", None)
    return repr(decode(ids)) if decode is not None else str(ids)


def _first_diff(a: Sequence[Any], b: Sequence[Any]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _reply_ids(prompt_text: str, prompt_ids: list[int], r: Rendered | Exception, side: str, tok: Any) -> list[int]:
    """The reply's ids after the prompt, once the rendering is proven to start with the prompt."""
    if isinstance(r, Exception):
        raise RowRejected(f"cannot render with the {side} reply: {r}")
    if not r.text.startswith(prompt_text):
        i = _first_diff(r.text, prompt_text)
        raise RowRejected(
            f"prompt renders differently: with the {side} reply the text before it differs from the inference "
            f"prompt at character {i} ({r.text[i : i + 30]!r} vs {prompt_text[i : i + 30]!r}); the template must "
            "render the prompt turns the same whatever reply follows"
        )
    n = len(prompt_ids)
    if r.input_ids[:n] != prompt_ids:
        j = _first_diff(r.input_ids, prompt_ids)
        raise RowRejected(
            f"prompt renders differently: with the {side} reply the tokens differ from the prompt's at token {j} "
            f"({_show(tok, r.input_ids[j : j + 2])} vs {_show(tok, prompt_ids[j : j + 2])}): the reply's first "
            "characters merge with the end of the generation prompt; end the template's generation prompt at a "
            "token boundary (e.g. a newline)"
        )
    end = next((k + 1 for k in range(len(r.labels) - 1, n - 1, -1) if r.labels[k] != IGNORE), n)
    if end <= n:
        raise RowRejected(f"the {side} reply renders to no trained token after the prompt")
    return r.input_ids[n:end]


def _bos(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "bos_token_id", None)


def budget(prompt_len: int, reply_len: int, cutoff_len: int) -> tuple[int, int]:
    """``(prompt tokens, reply tokens)`` kept under ``cutoff_len``: LLaMA-Factory's split, the
    reply first (its ``infer_seqlen``, re-derived here)."""
    if 2 * reply_len < cutoff_len:
        room = cutoff_len
    elif 2 * prompt_len < cutoff_len:
        room = cutoff_len - prompt_len
    else:
        room = cutoff_len * reply_len // (prompt_len + reply_len)
    keep_reply = min(room, reply_len)
    return min(cutoff_len - keep_reply, prompt_len), keep_reply


def fit(
    prompt_ids: list[int],
    replies: list[list[int]],
    cutoff_len: int | None,
    overflow: Overflow,
    source: str | None = None,
    bos_id: int | None = None,
) -> _Split:
    """Cut prompt + longest reply to ``cutoff_len`` (the module docstring says how)."""
    n, longest = len(prompt_ids), max(map(len, replies))
    if cutoff_len is None or n + longest <= cutoff_len:
        return _Split(prompt_ids, replies)
    what = f"prompt {n} + reply {longest} tokens exceed cutoff_len={cutoff_len}"
    if overflow is Overflow.error:
        raise TemplateError(f"{source or 'preference row'}: {what} (overflow: error)")
    if overflow is Overflow.drop:
        raise RowRejected(f"too long: dropped, {what} (overflow: drop)")
    keep_prompt, keep_reply = budget(n, longest, cutoff_len)
    if keep_reply < 1 or keep_prompt < 1:
        raise RowRejected(f"too long: {what}, and cutoff_len leaves no room for both; raise cutoff_len")
    head = [bos_id] if bos_id is not None and prompt_ids[0] == bos_id and keep_prompt > 1 else []
    tail = prompt_ids[n - keep_prompt + len(head) :]
    return _Split(head + tail, [r[:keep_reply] for r in replies], truncated=True)
