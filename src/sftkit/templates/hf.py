"""The tokenizer's own (Jinja) chat template, split into segments.

Segments come from rendering growing prefixes of the conversation: the text a
reply adds is ``render(messages[:i+1])`` minus ``render(messages[:i]) +
generation prompt``. That only works when each rendering is a prefix of the
next; templates that rewrite earlier turns (e.g. dropping old thinking blocks)
are reported with a clear error instead of being masked wrongly.

Two renders per reply are slow on large data sets, so when the template is a fixed
wrapper per role, its compiled form (``compiled.py``, proven equal on a probe set at
load time) renders the rows instead, for every row shape on which it has also been
checked against Jinja on a real row; other shapes stay on Jinja.

Fields the template ignores (reasoning, tool calls, tools) are written into the text first
(``inline.py``), on every path, so nothing in a row is dropped from training.

The template is code from the model's publisher: it is rendered in sftkit's budgeted sandbox
(``sandbox.py``), not by ``tokenizer.apply_chat_template``, and the probes run when the template
is loaded render it several times, so a template the sandbox refuses fails at load
(``TemplateBlocked``), before a run folder exists or a model is loaded.
"""

from __future__ import annotations

from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import TemplateError
from sftkit.templates.base import Segment
from sftkit.templates.compiled import Shape, agrees, compile_jinja, shape
from sftkit.templates.inline import Support, describe, lower, probe
from sftkit.templates.sandbox import compile_template, render_chat


def _to_hf(conv: Conversation, upto: int) -> list[dict[str, Any]]:
    out = []
    for m in conv.messages[:upto]:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.reasoning:
            d["reasoning_content"] = m.reasoning
        if m.tool_calls:
            d["tool_calls"] = [
                {"type": "function", "function": {"name": c.get("name"), "arguments": c.get("arguments", {})}}
                for c in m.tool_calls
            ]
        if m.name:
            d["name"] = m.name
        out.append(d)
    return out


class HFChatTemplate:
    """Adapter around ``tokenizer.apply_chat_template``.

    ``compile=False`` renders every row through Jinja (the reference the compiled form
    is checked against). ``stats`` counts rows rendered each way."""

    def __init__(self, tokenizer: Any, name: str = "tokenizer", compile: bool = True, where: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat template; set `template:` in the config to a shipped "
                "template (see `sft template list`) or a JSON/Jinja file"
            )
        self.tokenizer = tokenizer
        self.name = name  # (part of a run's fingerprint: unchanged across versions)
        # how errors name the template: its file, or the model it came with
        self.where = where or f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}"
        compile_template(self._source(None), self.where)  # a syntax error is named here, not on the first row
        self.stats = {"compiled": 0, "jinja": 0}
        self._shapes: dict[Shape, bool] = {}  # row shape -> compiled form checked equal on a real row
        self.support: Support = probe(lambda m, tools: self._render(m, False, tools))
        missing = self.support.missing()
        self.notes = f"the template ignores {', '.join(missing)}; sftkit writes {describe(missing)}" if missing else ""
        self.compiled = compile_jinja(self.jinja_segments, self._render, tokenizer.eos_token, name) if compile else None

    @property
    def stop_strings(self) -> list[str]:
        eos = self.tokenizer.eos_token
        return [eos] if eos else []

    def _source(self, tools: Any) -> str:
        """The template text (a tokenizer may carry several named ones: "default", "tool_use")."""
        try:
            return self.tokenizer.get_chat_template(None, tools)
        except ValueError as e:
            raise TemplateError(f"{self.where}: {e}") from None

    def _render(self, messages: list[dict[str, Any]], gen: bool, tools: Any = None) -> str:
        return render_chat(self._source(tools), self.where, messages, tools, gen, self.tokenizer.special_tokens_map)

    def _text(self, conv: Conversation, upto: int, gen: bool) -> str:
        if upto == 0 and not gen:
            return ""  # the text before any message (templates may add a default system prompt later)
        return self._render(_to_hf(conv, upto), gen, conv.tools)

    def segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
        conv = lower(conv, self.support)
        fast = self.compiled
        if fast is None:
            self.stats["jinja"] += 1
            return self.jinja_segments(conv, add_generation_prompt)
        key = shape(conv, add_generation_prompt)
        proven = self._shapes.get(key)
        if proven:
            self.stats["compiled"] += 1
            return fast.segments(conv, add_generation_prompt=add_generation_prompt)
        self.stats["jinja"] += 1
        segs = self.jinja_segments(conv, add_generation_prompt)
        if proven is None:  # first row of this shape: compare, and remember the verdict
            self._shapes[key] = agrees(fast, conv, add_generation_prompt, segs)
        return segs

    def jinja_segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
        conv = lower(conv, self.support)  # (a no-op when segments() already lowered it)
        # Two renders per reply (the prompt up to it, and the text through it); the
        # text between replies is prompt. No render is spent on user/system turns.
        segs: list[Segment] = []
        done = ""  # text covered by the segments so far
        n = len(conv.messages)
        for i, m in enumerate(conv.messages):
            if m.role != "assistant":
                continue
            head = self._text(conv, i, gen=True)
            self._extend(segs, done, head, "prompt", None, conv)
            done = self._text(conv, i + 1, gen=False)
            self._extend(segs, head, done, "reply", i, conv)
        if add_generation_prompt or not n or conv.messages[-1].role != "assistant":
            self._extend(segs, done, self._text(conv, n, gen=add_generation_prompt), "prompt", None, conv)
        return segs

    def _extend(
        self, segs: list[Segment], done: str, new: str, kind: str, idx: int | None, conv: Conversation
    ) -> None:
        if not new.startswith(done):
            raise TemplateError(
                f"{conv.source or 'conversation'}: the chat template of {self.name!r} rewrites earlier "
                f"turns (rendering of message {idx} is not an extension of the previous turns), so "
                "reply spans cannot be located; use a JSON template (`template:`) for this model"
            )
        if len(new) > len(done):
            segs.append(Segment(new[len(done):], kind, idx))  # type: ignore[arg-type]
