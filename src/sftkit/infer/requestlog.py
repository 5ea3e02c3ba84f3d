"""The server's request log: one JSON line per request, for ``sft serve-report`` to compare models.

``sft serve`` appends to ``--request-log`` (default ``serve_logs/requests.jsonl`` in the current
folder; ``--no-request-log`` turns it off). Each server start writes a ``start`` line (the models,
their roles, the canary share); then every request, answered or refused, writes a ``request`` line:

    {"event": "request", "time": "2026-12-05T10:00:00.123Z", "model": "v2", "role": "canary",
     "pinned": false, "endpoint": "chat", "stream": false, "status": 200, "error": null,
     "latency_s": 0.412, "first_token_s": null, "prompt_tokens": 31, "completion_tokens": 64,
     "finish_reason": "stop", "key": "user"}

``model``/``role`` are null for a request refused before it reached a model (a body that does not
parse, an unknown model id); ``key`` says where the routing key came from (user, header, address),
never the key itself: the log holds no prompts, answers or user ids. ``error`` is the OpenAI error
type (``invalid_request_error``, ``server_error``); a stream that failed after its headers were sent
has status 200 and ``error: "server_error"``; a client that left mid-stream has ``finish_reason:
"cancelled"``. Lines are written whole, line-buffered, so a killed server loses no finished request.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sftkit.core.errors import DataError, RefusedPath

DEFAULT_PATH = Path("serve_logs") / "requests.jsonl"
EVENTS = ("start", "request")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Observation:
    """What one request did, filled in as it goes (the route, then the answer or the error)."""

    endpoint: str
    started: float = field(default_factory=time.monotonic)
    time: str = field(default_factory=_now_iso)
    model: str | None = None
    role: str | None = None
    pinned: bool = False
    key: str | None = None
    stream: bool = False
    status: int = 200
    error: str | None = None
    latency_s: float | None = None
    first_token_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    def fail(self, status: int, error_type: str) -> None:
        self.status, self.error = status, error_type

    def first_token(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.started

    def end(self) -> None:
        self.latency_s = time.monotonic() - self.started

    @property
    def failed(self) -> bool:
        return self.status >= 400 or self.error is not None

    def record(self) -> dict[str, Any]:
        return {"event": "request", "time": self.time, "model": self.model, "role": self.role,
                "pinned": self.pinned, "endpoint": self.endpoint, "stream": self.stream, "status": self.status,
                "error": self.error, "latency_s": _round(self.latency_s), "first_token_s": _round(self.first_token_s),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "finish_reason": self.finish_reason, "key": self.key}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _is_log(path: Path) -> bool:
    """Whether ``path`` starts like a request log (so appending to it cannot damage anything else)."""
    with path.open("rb") as f:
        first = f.readline(65536)
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and row.get("event") in EVENTS


class RequestLog:
    """Append-only JSONL, safe to call from any thread. A file that exists must be a request log;
    that is checked at once, but nothing is created before the first line (a server that fails to
    start leaves no file behind)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            raise RefusedPath(f"--request-log {path} is a folder; give a file path (e.g. {path / 'requests.jsonl'})")
        if path.exists() and path.stat().st_size and not _is_log(path):
            raise RefusedPath(f"--request-log {path} exists and is not an sft serve request log; it was left "
                              "unchanged: choose another path")
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._closed = False

    def _write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            if self._closed:
                return
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8", buffering=1)  # line-buffered: lines land whole
            self._file.write(line)

    def start(self, models: list[dict[str, Any]], share: float | None) -> None:
        self._write({"event": "start", "time": _now_iso(), "models": models, "share": share})

    def write(self, obs: Observation) -> None:
        self._write(obs.record())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()


@dataclass(slots=True)
class LogContents:
    starts: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    bad_lines: list[int]


def read_log(path: Path) -> LogContents:
    """Every line of a request log; lines that are not log records are counted by number, not fatal
    (a server killed mid-line leaves at most one)."""
    if not path.is_file():
        raise DataError(f"{path}: no such request log (sft serve writes serve_logs/requests.jsonl by default, "
                        "or where --request-log says)")
    out = LogContents([], [], [])
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                out.bad_lines.append(i)
                continue
            kind = row.get("event") if isinstance(row, dict) else None
            if kind == "start":
                out.starts.append(row)
            elif kind == "request":
                out.requests.append(row)
            else:
                out.bad_lines.append(i)
    if not out.starts and not out.requests:
        raise DataError(f"{path}: not an sft serve request log (no start or request lines)")
    return out
