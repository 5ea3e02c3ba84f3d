"""What a chat template is, as far as the renderer cares.

A template turns a ``Conversation`` into an ordered list of ``Segment`` s whose
texts, joined, are exactly the string the model sees. Each segment says whether
it is part of an assistant *reply* (a candidate for training) and which message
it belongs to. Masking policies and tokenization live in ``render.py`` so that
every template source (the tokenizer's Jinja template, a shipped JSON template,
a user's file) goes through the same code at train and at inference time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

from sftkit.core.conversation import Conversation


class MaskPolicy(StrEnum):
    """Which tokens carry loss."""

    assistant = "assistant"  # every assistant reply (multi-turn), the default
    last = "last"  # only the final assistant reply
    all = "all"  # every token (plain text, continued pre-training)


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    kind: Literal["prompt", "reply"]
    message_index: int | None = None


class ChatTemplate(Protocol):
    name: str

    @property
    def stop_strings(self) -> list[str]:
        """End-of-turn strings: generation stops at any of them."""
        ...

    def segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
        """The conversation as ordered segments; with ``add_generation_prompt``
        the text ends where the model should start writing a reply."""
        ...


class TemplateError(ValueError):
    """A template cannot render a conversation (with the reason and the row)."""


class RowRejected(TemplateError):
    """This one row cannot be used (too long under ``drop``, nothing left to
    train after truncation); it is reported, the run goes on."""


class TemplateBlocked(TemplateError):
    """The template itself is refused: it reached for Python internals, or a render went over its
    time or size budget (``sandbox.py``). Never a bad row to skip: the template is at fault."""
