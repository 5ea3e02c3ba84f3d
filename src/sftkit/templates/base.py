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
from typing import Literal, Protocol

from sftkit.core.conversation import Conversation


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






