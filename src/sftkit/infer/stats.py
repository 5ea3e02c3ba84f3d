"""The generation counters of one ``Engine``: what ``sft serve`` reports at ``/health`` (and what a
metrics endpoint can read). The engine's worker thread writes them, the server's event loop reads
them, so every access holds the lock.

* ``tokens_per_s``: tokens generated in the last ``WINDOW_S`` seconds, per second (the current
  throughput; 0 when idle).
* ``decode_tokens_per_s``: all generated tokens / the seconds spent in forward passes (the speed
  while busy, since start).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

WINDOW_S = 10.0


class InferStats:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()  # (time a step ended, tokens it generated)
        self.prompts = 0  # prompts taken into a batch (a retried one counts once)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.forward_passes = 0
        self.decode_s = 0.0
        self.oom_halvings = 0
        self.batch_cap: int | None = None  # rows per batch after an out-of-memory error (None: never)
        self.largest_batch = 0

    def started(self, prompts: int, prompt_tokens: int) -> None:
        with self._lock:
            self.prompts += prompts
            self.prompt_tokens += prompt_tokens

    def step(self, rows: int, seconds: float) -> None:
        """One forward pass that produced a token for each of ``rows`` rows."""
        now = time.monotonic()
        with self._lock:
            self.forward_passes += 1
            self.completion_tokens += rows
            self.decode_s += seconds
            self.largest_batch = max(self.largest_batch, rows)
            self._recent.append((now, rows))
            self._trim(now)

    def halved(self, cap: int) -> None:
        with self._lock:
            self.oom_halvings += 1
            self.batch_cap = cap

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            recent = sum(n for _, n in self._recent)
            return {
                "tokens_per_s": round(recent / self.window_s, 2),
                "decode_tokens_per_s": round(self.completion_tokens / self.decode_s, 2) if self.decode_s else 0.0,
                "prompts_total": self.prompts,
                "prompt_tokens_total": self.prompt_tokens,
                "completion_tokens_total": self.completion_tokens,
                "forward_passes_total": self.forward_passes,
                "oom_halvings": self.oom_halvings,
                "batch_cap": self.batch_cap,
                "largest_engine_batch": self.largest_batch,
            }
