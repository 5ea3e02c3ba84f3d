"""The plain data of decoding: settings (``GenParams``), one result (``GenResult``), the state of one
row being decoded, and the stop-string helpers. No torch here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sftkit.core.errors import UsageError

FinishReason = Literal["stop", "length", "abort"]  # abort: the caller left mid-stream


@dataclass(slots=True)
class GenParams:
    """Decoding settings. ``temperature <= 0`` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UsageError(f"repetition_penalty must be positive, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(slots=True)
class GenResult:
    """One completion. ``token_ids`` are the generated ids including a final
    end-of-turn token when there was one; ``text`` excludes stop strings."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float
    total_s: float


@dataclass(slots=True)
class _Row:
    """Decoding state of one prompt."""

    index: int
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of ``text`` already streamed
    finish: FinishReason | None = None
    first_s: float = 0.0
    total_s: float = 0.0
    max_new: int | None = None  # this row's own limit (streams batched together keep theirs)
    abort: bool = False  # the caller is gone: leave the batch at the next step


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string (or an
    incomplete UTF-8 character) and so must not be streamed yet."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    if text.endswith("\ufffd"):
        n = max(n, 1)
    return n
