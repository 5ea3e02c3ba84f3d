"""Streamed generation: ``MultiStream`` (several rows decoded as one batch, one forward pass per
``step()``) and ``Stream`` (one row, as an iterator of text deltas). Built by ``Engine.stream`` and
``Engine.stream_many``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sftkit.infer import memory
from sftkit.infer.decoding import GenParams, GenResult, _Row

if TYPE_CHECKING:
    from sftkit.infer.engine import Engine


class Stream:
    """An ``Iterator[str]`` of text deltas that also keeps the final result (one row of a ``MultiStream``)."""

    def __init__(self, multi: MultiStream) -> None:
        self._multi = multi
        self.result: GenResult | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        while True:  # a step may hold text back (a stop string could be starting)
            step = self._multi.step()
            if step is None:
                self.result = self._multi.result(0)
                raise StopIteration
            if step:
                return "".join(d for _, d in step)

    def close(self) -> None:
        self._multi.close()  # drops the KV cache now


class MultiStream:
    """Batched streams: ``step()`` runs one forward pass for every unfinished row and returns the
    ``(row, delta)`` pairs it produced, or ``None`` once every row has finished. Out of memory: the
    rows of the batch go on in two halves (each a forward pass per step), their text continuing
    where it was, so a client never sees a delta twice."""

    def __init__(self, engine: Engine, rows: list[_Row], params: GenParams) -> None:
        self._engine, self.rows, self._params = engine, rows, params
        self._gen = engine._generator(params)
        self._t0 = time.perf_counter()
        self._parts: list[tuple[list[_Row], Iterator[list[tuple[int, str]]]]] = [self._part(rows)]

    def _part(self, rows: list[_Row]) -> tuple[list[_Row], Iterator[list[tuple[int, str]]]]:
        return rows, self._engine._decode(rows, self._params, self._gen, self._t0, stream=True)

    def step(self) -> list[tuple[int, str]] | None:
        if not self._parts:
            return None
        out: list[tuple[int, str]] = []
        for part in list(self._parts):
            rows, it = part
            try:
                out += next(it)
                continue
            except StopIteration:
                self._parts.remove(part)
                continue
            except Exception as e:
                if not memory.is_oom(e):
                    raise
            live = [r for r in rows if r.finish is None]
            half = self._engine.halve(live, self._params)
            at = self._parts.index(part)
            self._parts[at : at + 1] = [self._part(live[i : i + half]) for i in range(0, len(live), half)]
        return out if out or self._parts else None

    def finished(self, i: int) -> bool:
        return self.rows[i].finish is not None

    def result(self, i: int) -> GenResult:
        return self._engine._result(self.rows[i])

    def abort(self, i: int) -> None:
        self.rows[i].abort = True

    def close(self) -> None:
        for _, it in self._parts:
            it.close()  # type: ignore[attr-defined]
        self._parts = []
