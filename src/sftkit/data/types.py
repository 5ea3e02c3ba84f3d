"""Result types shared by every data module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sftkit.core.conversation import Conversation

OnError = Literal["skip", "fail"]




@dataclass(slots=True)
class Reject:
    """One row that was not accepted. ``raw`` is the row verbatim (the JSONL line,
    the JSON array element's text, the CSV record); ``line`` is 1-based (for a
    JSON array, the line where the element starts; for Parquet, the row number)."""

    file: str
    line: int
    reason: str
    raw: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self, with_raw: bool = True) -> dict[str, object]:
        out: dict[str, object] = {"file": self.file, "line": self.line, "reason": self.reason}
        if with_raw:
            out["raw"] = self.raw
        return out


@dataclass(slots=True)
class LoadResult:
    """Every row of one file: accepted (``conversations``) or ``rejects``.
    ``len(conversations) + len(rejects) == total`` always."""

    conversations: list[Conversation]
    rejects: list[Reject]
    total: int
    format: str
    path: str
    file_type: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return len(self.conversations)

    @property
    def rejected(self) -> int:
        return len(self.rejects)
