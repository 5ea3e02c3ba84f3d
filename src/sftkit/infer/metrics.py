"""``GET /metrics``: the server's numbers per model, in Prometheus' text format.

Counted here, from every request the server finishes (``observe``): requests by endpoint and
status code, errors by OpenAI error type, latency and time-to-first-token histograms, prompt and
completion tokens, and completion tokens per second over the last minute. Read at scrape time from
each model's batcher: the queue length and the active streams. Series carry a ``model`` label (the
served id; ``unrouted`` for requests refused before they reached a model), and
``sftkit_model_info{model, role}`` says which model is the stable one and which the canary.

The exposition is written by ``prometheus_client`` (one registry per app, no process globals)
through a collector that reads this object, so a scrape sees one consistent snapshot.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sftkit.infer.requestlog import Observation

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKENS_WINDOW_S = 60.0
UNROUTED = "unrouted"


class Histogram:
    """Counts per bucket (``le`` inclusive, as Prometheus defines it) and the sum."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for le, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += n
            out.append((le, float(total)))
        return out


@dataclass(slots=True)
class _PerModel:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, code)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, error type)
    latency: Histogram = field(default_factory=Histogram)
    first_token: Histogram = field(default_factory=Histogram)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (when, completion tokens)


@dataclass(frozen=True, slots=True)
class Served:
    """A model the metrics describe: its id, role, and how to read its batcher's load now."""

    name: str
    role: str
    load: Callable[[], dict[str, int]]


class ServeMetrics:
    def __init__(self, models: list[Served], canary_share: float | None = None) -> None:
        self.models, self.canary_share = models, canary_share
        self._lock = threading.Lock()
        self._per: dict[str, _PerModel] = {m.name: _PerModel() for m in models}

    def observe(self, obs: Observation) -> None:
        """Count a finished request (any thread)."""
        now = time.monotonic()
        with self._lock:
            m = self._per.setdefault(obs.model or UNROUTED, _PerModel())
            m.requests[(obs.endpoint, str(obs.status))] += 1
            if obs.failed:
                m.errors[(obs.endpoint, obs.error or "error")] += 1
            if obs.model is None:
                return
            if obs.latency_s is not None:
                m.latency.observe(obs.latency_s)
            if obs.first_token_s is not None:
                m.first_token.observe(obs.first_token_s)
            m.prompt_tokens += obs.prompt_tokens
            m.completion_tokens += obs.completion_tokens
            if obs.completion_tokens:
                m.recent.append((now, obs.completion_tokens))

    def tokens_per_second(self, model: str, now: float | None = None) -> float:
        """Completion tokens of the requests that finished in the last ``TOKENS_WINDOW_S`` seconds, per second."""
        with self._lock:
            return _rate(self._per[model], time.monotonic() if now is None else now)

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of a scrape."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def families(self) -> list[Any]:
        """One consistent snapshot, as prometheus_client metric families."""
        loads = {m.name: m.load() for m in self.models}  # each batcher's own lock, not under ours
        with self._lock:
            return list(self._families(loads, time.monotonic()))

    def _families(self, loads: dict[str, dict[str, int]], now: float) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        info = GaugeMetricFamily("sftkit_model_info", "The models served, with their role (stable or canary).",
                                 labels=["model", "role"])
        for m in self.models:
            info.add_metric([m.name, m.role], 1)
        yield info
        if self.canary_share is not None:
            yield GaugeMetricFamily("sftkit_canary_share", "Share of users routed to the canary model.",
                                    value=self.canary_share)
        requests = CounterMetricFamily("sftkit_requests", "Requests finished, by endpoint and HTTP status code.",
                                       labels=["model", "endpoint", "code"])
        errors = CounterMetricFamily("sftkit_request_errors", "Requests that failed (status >= 400 or an error "
                                     "in the stream), by OpenAI error type.", labels=["model", "endpoint", "type"])
        latency = HistogramMetricFamily("sftkit_request_latency_seconds", "Time from the request to its last byte.",
                                        labels=["model"])
        ttft = HistogramMetricFamily("sftkit_time_to_first_token_seconds", "Streams: time to the first token.",
                                     labels=["model"])
        prompt = CounterMetricFamily("sftkit_prompt_tokens", "Prompt tokens of answered requests.", labels=["model"])
        done = CounterMetricFamily("sftkit_completion_tokens", "Completion tokens generated.", labels=["model"])
        for name, m in self._per.items():
            for (endpoint, code), n in sorted(m.requests.items()):
                requests.add_metric([name, endpoint, code], n)
            for (endpoint, kind), n in sorted(m.errors.items()):
                errors.add_metric([name, endpoint, kind], n)
            if name == UNROUTED:
                continue
            latency.add_metric([name], m.latency.cumulative(), m.latency.sum)
            ttft.add_metric([name], m.first_token.cumulative(), m.first_token.sum)
            prompt.add_metric([name], m.prompt_tokens)
            done.add_metric([name], m.completion_tokens)
        yield from (requests, errors, latency, ttft, prompt, done)
        tps = GaugeMetricFamily("sftkit_completion_tokens_per_second",
                                f"Completion tokens per second over the last {TOKENS_WINDOW_S:.0f} s.",
                                labels=["model"])
        queue = GaugeMetricFamily("sftkit_queue_length", "Requests and streams waiting for the model.",
                                  labels=["model"])
        streams = GaugeMetricFamily("sftkit_active_streams", "Streams being decoded now.", labels=["model"])
        for m in self.models:
            load = loads[m.name]
            tps.add_metric([m.name], _rate(self._per[m.name], now))
            queue.add_metric([m.name], load.get("queued_requests", 0) + load.get("waiting_streams", 0))
            streams.add_metric([m.name], load.get("active_streams", 0))
        yield from (tps, queue, streams)


def _rate(m: _PerModel, now: float) -> float:
    while m.recent and m.recent[0][0] < now - TOKENS_WINDOW_S:
        m.recent.popleft()
    return sum(n for _, n in m.recent) / TOKENS_WINDOW_S


class _Collector:
    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self.metrics.families()
