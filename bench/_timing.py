"""What the training benchmarks share: counting the tokens a collator sees, and timing optimizer steps.

Imported by ``train_throughput.py`` and ``gpu_train.py`` (each puts this folder on ``sys.path``)."""

from __future__ import annotations

import time
from typing import Any


class Counting:
    """Wraps a collator: real tokens (the rows it is given) and processed tokens (what it returns)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.real: list[int] = []
        self.processed: list[int] = []

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.inner(rows)
        self.real.append(sum(len(r["input_ids"]) for r in rows))
        self.processed.append(out["input_ids"].numel())
        return out


def step_timer() -> Any:
    """A callback recording when each optimizer step ends (after the device finished it) and the logged losses."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the step's kernels have finished, not only been queued
            return time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.ends = [self._now()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.ends.append(self._now())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 3))

    return StepTimer()


def timed_steps(timer: Any, counter: Counting, warmup: int) -> tuple[list[float], int, int]:
    """(durations of the timed steps, real tokens, processed tokens in them); one batch per step."""
    durations = [b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False)][warmup:]
    steps = range(warmup, warmup + len(durations))
    return durations, sum(counter.real[i] for i in steps), sum(counter.processed[i] for i in steps)


def train_counted(cfg: Any, console: Any) -> tuple[Any, Counting]:
    """``sft train`` on ``cfg`` in-process (run folder replaced), with the step timer and the last
    collator it built wrapped in ``Counting``: (timer, counter) for ``timed_steps``."""
    from sftkit.core.rundir import Overwrite
    from sftkit.train import accel
    from sftkit.train import recipe as train

    counters: list[Counting] = []
    original = accel.train_collator

    def counting_collator(*a: Any, **kw: Any) -> Counting:
        counters.append(Counting(original(*a, **kw)))
        return counters[-1]

    timer = step_timer()
    accel.train_collator = counting_collator
    try:
        train.run(cfg, console=console, callbacks=[timer], overwrite=Overwrite.DELETE)
    finally:
        accel.train_collator = original
    return timer, counters[-1]
