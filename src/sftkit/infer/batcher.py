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
* Streaming requests that arrive together (same window, same decoding settings) are
  decoded as one batch (``Engine.stream_many``): one forward pass per step serves
  all of them, each keeping its own ``max_new_tokens``. Stream groups take turns
  with each other and with the non-streaming batches, one step per turn; up to
  ``max_streams`` streams are active, the rest wait. A cancelled stream (client
  gone) leaves its batch at the next step, which frees its slot.
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

from sftkit.infer.engine import Engine, GenParams, GenResult, MultiStream, _cut_at_stop

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
        self.arrived = time.monotonic()

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


@dataclass(slots=True)
class _StreamGroup:
    """Streams decoded together: ``handles[i]`` is row ``i`` of ``multi`` (None once it is done)."""

    handles: list[StreamHandle | None]
    multi: MultiStream

    def live(self) -> list[tuple[int, StreamHandle]]:
        return [(i, h) for i, h in enumerate(self.handles) if h is not None]


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
        self._groups: list[_StreamGroup] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        self._serial = itertools.count()
        self.stats = {"batches": 0, "batched_prompts": 0, "largest_batch": 0, "streams": 0, "cancelled_streams": 0,
                      "stream_batches": 0, "largest_stream_batch": 0, "errors": 0}

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
                    "active_streams": self._n_active()}

    def _n_active(self) -> int:
        return sum(len(g.live()) for g in self._groups)

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
                while not (self._stop or self._jobs or self._waiting_streams or self._groups):
                    self._cond.wait(0.5)
                if self._stop:
                    self._fail_all(RuntimeError("server shutting down"))
                    return
                firsts = [q[0].arrived for q in (self._jobs, self._waiting_streams) if q]
                oldest = min(firsts) if firsts else None
            if oldest is not None and not self._groups:
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
        """Waiting streams become batched groups (one per decoding setting), as far as slots allow."""
        with self._cond:
            room = self.max_streams - self._n_active()
            taken: list[StreamHandle] = []
            while self._waiting_streams and len(taken) < room:
                h = self._waiting_streams.popleft()
                if h.cancelled.is_set():  # the client left before its turn
                    self.stats["cancelled_streams"] += 1
                    h._put(_DONE)
                else:
                    taken.append(h)
        groups: dict[tuple[Any, ...], list[StreamHandle]] = {}
        for h in taken:
            groups.setdefault(_group_key(h.params, next(self._serial)), []).append(h)
        for hs in groups.values():
            try:
                multi = self.engine.stream_many([h.prompt for h in hs], hs[0].params,
                                                [h.params.max_new_tokens for h in hs])
            except Exception as e:  # noqa: BLE001 - e.g. a prompt the tokenizer refuses: tell these clients
                self.stats["errors"] += 1
                for h in hs:
                    self._end(h, e)
                continue
            self.stats["streams"] += len(hs)
            self.stats["stream_batches"] += 1
            self.stats["largest_stream_batch"] = max(self.stats["largest_stream_batch"], len(hs))
            with self._cond:
                self._groups.append(_StreamGroup(list(hs), multi))

    def _step_streams(self) -> None:
        """One forward step for each stream group; deltas go to their clients."""
        for g in list(self._groups):
            for i, h in g.live():
                if h.cancelled.is_set():  # the row leaves the batch at this step
                    self.stats["cancelled_streams"] += 1
                    g.multi.abort(i)
                    g.handles[i] = None
                    self._end(h, None)
            try:
                step = g.multi.step()
            except Exception as e:  # noqa: BLE001 - report to these clients, keep serving the others
                self.stats["errors"] += 1
                self._close_group(g, e)
                continue
            for i, delta in step or []:
                h = g.handles[i]
                if h is not None:
                    h._put(delta)
            for i, h in g.live():
                if step is None or g.multi.finished(i):
                    g.handles[i] = None
                    self._end(h, g.multi.result(i))
            if not g.live():
                self._close_group(g, None)

    def _close_group(self, g: _StreamGroup, error: BaseException | None) -> None:
        g.multi.close()  # drops the batch's KV cache now
        for i, h in g.live():
            g.handles[i] = None
            self._end(h, error)
        with self._cond:
            if g in self._groups:
                self._groups.remove(g)

    @staticmethod
    def _end(h: StreamHandle, last: Any) -> None:
        if last is not None:
            h._put(last)
        h._put(_DONE)

    def _fail_all(self, e: BaseException) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(e)
        for g in list(self._groups):
            self._close_group(g, e)
        for h in self._waiting_streams:
            self._end(h, e)
        self._waiting_streams.clear()
