"""The one in-memory shape every data layout is mapped to.

Readers (``sftkit.data``) turn rows into ``Conversation`` objects; templates
(``sftkit.templates``) turn them into text, token ids and labels. Nothing else
in the code base needs to know which file layout a conversation came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(slots=True)
class Message:
    """One turn. ``reasoning`` holds a thinking block (CoT rows); ``tool_calls``
    holds OpenAI-style calls ``[{"name": ..., "arguments": {...}}]`` made by an
    assistant turn."""

    role: Role
    content: str
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning:
            out["reasoning"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.name:
            out["name"] = self.name
        return out


@dataclass(slots=True)
class Conversation:
    """A chat (``messages``) or, for continued pre-training rows, plain ``text``.

    ``source`` is ``"file:line"`` of the row it came from, so every error and
    every report can point back at the user's data.
    """

    messages: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    text: str | None = None
    source: str | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant reply (the inference prompt)."""
        last = self.last_assistant_index()
        return self.messages[:last] if last is not None else list(self.messages)

    def last_assistant_index(self) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "assistant":
                return i
        return None

    def final_reply(self) -> str | None:
        i = self.last_assistant_index()
        return self.messages[i].content if i is not None else None

    def to_dict(self) -> dict[str, Any]:
        if self.is_text:
            return {"text": self.text}
        out: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.tools:
            out["tools"] = self.tools
        return out

    @classmethod
    def from_messages(cls, messages: list[dict[str, Any]], **kw: Any) -> Conversation:
        """Build from already-validated OpenAI-style dicts (tests, CLI prompts)."""
        return cls(
            messages=[
                Message(
                    role=m["role"],
                    content=m.get("content") or "",
                    reasoning=m.get("reasoning") or m.get("reasoning_content"),
                    tool_calls=m.get("tool_calls"),
                    name=m.get("name"),
                )
                for m in messages
            ],
            **kw,
        )
