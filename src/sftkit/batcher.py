"""A thread-safe request batcher in front of the shared generation ``Engine``.

One background worker thread owns the model: every forward pass happens there,
so the model and its KV caches are never touched from two threads at once.

* Non-streaming requests are queued; the worker waits ``wait_s`` after the first
  one arrives so that concurrent clients land in the same ``Engine.generate``
  call and share forward passes. Requests are grouped by decoding settings
  (``Engine.generate`` takes one ``GenParams`` per call); within a group the
  longest ``max_new_tokens`` is used and shorter requests are trimmed
  afterwards, which gives exactly the tokens they would get alone (a row that
  stopped earlier is unaffected; one that did not is cut at its own limit).
  Seeded sampling requests run in a group of their own, so a seed reproduces.
* Streaming requests run one ``Engine.stream`` each, interleaved round-robin
  with each other (one text delta per stream per turn) and with the batches:
  up to ``max_streams`` are active, the rest wait. A cancelled stream (client
  gone) is closed at its next turn, which frees its slot.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from sftkit.generate import Engine, GenParams, GenResult, Stream, _cut_at_stop

_DONE = object()  # end-of-stream marker put on a stream's queue


@dataclass(slots=True)
class _BatchJob:
    prompts: list[str]
    params: GenParams
    future: Future[list[GenResult]]
    arrived: float = field(default_factory=time.monotonic)


class StreamHandle:
    """The caller's side of a streaming request: an asyncio queue of text deltas
    (then ``GenResult`` or an exception, then the end marker) and ``cancel()``."""

    def __init__(self, prompt: str, params: GenParams, loop: asyncio.AbstractEventLoop) -> None:
        self.prompt, self.params, self.loop = prompt, params, loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.stream: Stream | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, item: Any) -> None:
        # Called from the worker thread; asyncio queues are not thread-safe.
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    async def events(self) -> Any:
        """Async iterator over deltas (``str``), then the final ``GenResult``."""
        while True:
            item = await self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _group_key(p: GenParams, serial: int) -> tuple[Any, ...]:
    if not p.greedy and p.seed is not None:
        return ("seeded", serial)  # never shares a generator with another request
    return (p.temperature if not p.greedy else 0.0, p.top_p, p.top_k, p.repetition_penalty, tuple(p.stop))


class Batcher:
    """Collects requests from any thread and runs them on one worker thread."""

    def __init__(self, engine: Engine, max_batch: int = 16, wait_s: float = 0.005, max_streams: int | None = None):
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.wait_s = wait_s
        self.max_streams = max_streams or self.max_batch
        self._cond = threading.Condition()
        self._jobs: deque[_BatchJob] = deque()
        self._waiting_streams: deque[StreamHandle] = deque()
        self._active: list[StreamHandle] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        self._serial = itertools.count()
        self.stats = {"batches": 0, "batched_prompts": 0, "largest_batch": 0, "streams": 0, "cancelled_streams": 0,
                      "errors": 0}

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Batcher:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="sftkit-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def load(self) -> dict[str, int]:
        with self._cond:
            return {"queued_requests": len(self._jobs), "waiting_streams": len(self._waiting_streams),
                    "active_streams": len(self._active)}

    # -- submitting (any thread) ------------------------------------------------

    def submit(self, prompts: Sequence[str], params: GenParams) -> Future[list[GenResult]]:
        fut: Future[list[GenResult]] = Future()
        with self._cond:
            self._jobs.append(_BatchJob(list(prompts), params, fut))
            self._cond.notify_all()
        return fut

    def submit_stream(self, prompt: str, params: GenParams, loop: asyncio.AbstractEventLoop) -> StreamHandle:
        h = StreamHandle(prompt, params, loop)
        with self._cond:
            self._waiting_streams.append(h)
            self._cond.notify_all()
        return h

    def generate(self, prompts: Sequence[str], params: GenParams, timeout: float | None = None) -> list[GenResult]:
        """Blocking convenience for threads (tests, scripts)."""
        return self.submit(prompts, params).result(timeout)

    # -- worker ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._jobs or self._waiting_streams or self._active):
                    self._cond.wait(0.5)
                if self._stop:
                    self._fail_all(RuntimeError("server shutting down"))
                    return
                oldest = self._jobs[0].arrived if self._jobs else None
            if oldest is not None and not self._active:
                # The batching window: let concurrent requests catch up.
                delay = oldest + self.wait_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self._run_batch(self._take_jobs())
            self._admit_streams()
            self._step_streams()

    def _take_jobs(self) -> list[_BatchJob]:
        taken: list[_BatchJob] = []
        n = 0
        with self._cond:
            while self._jobs and (not taken or n + len(self._jobs[0].prompts) <= self.max_batch):
                job = self._jobs.popleft()
                if job.future.set_running_or_notify_cancel():
                    taken.append(job)
                    n += len(job.prompts)
        return taken

    def _run_batch(self, jobs: list[_BatchJob]) -> None:
        groups: dict[tuple[Any, ...], list[_BatchJob]] = {}
        for job in jobs:
            groups.setdefault(_group_key(job.params, next(self._serial)), []).append(job)
        for group in groups.values():
            longest = max(j.params.max_new_tokens for j in group)
            params = replace(group[0].params, max_new_tokens=longest)
            prompts = [p for j in group for p in j.prompts]
            try:
                results = self.engine.generate(prompts, params)
            except Exception as e:  # noqa: BLE001 - a failed batch must not kill the worker
                if len(group) > 1:  # one bad request must not fail the others: run each alone
                    for j in group:
                        self._run_batch([j])
                    continue
                self.stats["errors"] += 1
                group[0].future.set_exception(e)
                continue
            self.stats["batches"] += 1
            self.stats["batched_prompts"] += len(prompts)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(prompts))
            it = iter(results)
            for j in group:
                mine = [self._trim(next(it), j.params) for _ in j.prompts]
                j.future.set_result(mine)

    def _trim(self, r: GenResult, p: GenParams) -> GenResult:
        """Cut a result generated with a longer limit down to ``p.max_new_tokens``."""
        if r.completion_tokens <= p.max_new_tokens:
            return r
        ids = r.token_ids[: p.max_new_tokens]
        text = self.engine.tokenizer.decode(ids, skip_special_tokens=False)
        text, _ = _cut_at_stop(text, [*self.engine.stop_strings, *p.stop])
        return replace(r, text=text, token_ids=ids, finish_reason="length", completion_tokens=len(ids))

    def _admit_streams(self) -> None:
        with self._cond:
            while self._waiting_streams and len(self._active) < self.max_streams:
                h = self._waiting_streams.popleft()
                if h.cancelled.is_set():
                    h._put(_DONE)
                    continue
                self._active.append(h)

    def _step_streams(self) -> None:
        for h in list(self._active):
            if h.cancelled.is_set():
                self.stats["cancelled_streams"] += 1
                self._finish(h, None)
                continue
            try:
                if h.stream is None:
                    h.stream = self.engine.stream(h.prompt, h.params)
                    self.stats["streams"] += 1
                h._put(next(h.stream))
            except StopIteration:
                self._finish(h, h.stream.result if h.stream else None)
            except Exception as e:  # noqa: BLE001 - report to this client, keep serving the others
                self.stats["errors"] += 1
                self._finish(h, e)

    def _finish(self, h: StreamHandle, last: Any) -> None:
        if h.stream is not None:
            # Stream has no close(); closing its decode generator drops the KV cache now.
            h.stream._it.close()
        with self._cond:
            if h in self._active:
                self._active.remove(h)
        if last is not None:
            h._put(last)
        h._put(_DONE)

    def _fail_all(self, e: BaseException) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(e)
        for h in [*self._active, *self._waiting_streams]:
            h._put(e)
            h._put(_DONE)
        self._active.clear()
        self._waiting_streams.clear()
