"""The tokenizer's own (Jinja) chat template, split into segments.

Segments come from rendering growing prefixes of the conversation: the text a
reply adds is ``render(messages[:i+1])`` minus ``render(messages[:i]) +
generation prompt``. That only works when each rendering is a prefix of the
next; templates that rewrite earlier turns (e.g. dropping old thinking blocks)
are reported with a clear error instead of being masked wrongly.
"""

from __future__ import annotations

from typing import Any

from sftkit.conversation import Conversation
from sftkit.templates.base import Segment, TemplateError


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
    """Adapter around ``tokenizer.apply_chat_template``."""

    def __init__(self, tokenizer: Any, name: str = "tokenizer") -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat template; set `template:` in the config to a shipped "
                "template (see `sft template list`) or a JSON/Jinja file"
            )
        self.tokenizer = tokenizer
        self.name = name

    @property
    def stop_strings(self) -> list[str]:
        eos = self.tokenizer.eos_token
        return [eos] if eos else []

    def _text(self, conv: Conversation, upto: int, gen: bool) -> str:
        if upto == 0 and not gen:
            return ""  # the text before any message (templates may add a default system prompt later)
        return self.tokenizer.apply_chat_template(
            _to_hf(conv, upto), tools=conv.tools, tokenize=False, add_generation_prompt=gen
        )

    def segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
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
