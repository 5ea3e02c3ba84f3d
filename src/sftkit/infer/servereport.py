"""``sft serve-report LOG``: the models of a request log side by side (a canary against the stable one).

Per model: requests; failures split into client errors (4xx: a bad body, a prompt too long) and
server errors (5xx, or a stream that failed after it started), with the server error rate and its
95% Wilson interval (is the canary's rate really higher, or is it three requests?); latency
percentiles and time to first token (streams) over the answered requests; mean prompt and
completion tokens; tokens per second per request (completion tokens / latency, summed). Then the
canary against the stable model: the differences and ratios a release decision looks at, and the
share of the split requests the canary answered (the configured share is of users; the observed
share is of their requests, so heavy users move it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sftkit.infer.requestlog import LogContents, read_log

PERCENTILES = (50, 90, 99)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def wilson(failures: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a rate: sound at small counts and rates near 0, unlike p ± 2·se."""
    if n == 0:
        return None
    p = failures / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _spread(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{q}": _r(percentile(values, q)) for q in PERCENTILES}
    out["mean"] = _r(sum(values) / len(values)) if values else None
    return out


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def model_summary(model: str, role: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [r for r in rows if r.get("status") == 200 and not r.get("error")]
    finished = [r for r in answered if r.get("finish_reason") != "cancelled"]
    client = sum(1 for r in rows if 400 <= (r.get("status") or 0) < 500)
    server = sum(1 for r in rows if (r.get("status") or 0) >= 500 or (r.get("status") == 200 and r.get("error")))
    seconds = sum(r.get("latency_s") or 0.0 for r in finished)
    done = sum(r.get("completion_tokens") or 0 for r in finished)
    n = len(rows)
    interval = wilson(server, n)
    return {
        "model": model, "role": role, "requests": n, "answered": len(answered),
        "cancelled": len(answered) - len(finished), "client_errors": client, "server_errors": server,
        "server_error_rate": _r(server / n) if n else None,
        "server_error_rate_ci95": [_r(x) for x in interval] if interval else None,
        "latency_s": _spread([r["latency_s"] for r in finished if r.get("latency_s") is not None]),
        "first_token_s": _spread([r["first_token_s"] for r in finished if r.get("first_token_s") is not None]),
        "prompt_tokens_mean": _r(sum(r.get("prompt_tokens") or 0 for r in finished) / len(finished), 2)
        if finished else None,
        "completion_tokens_mean": _r(done / len(finished), 2) if finished else None,
        "completion_tokens_total": done,
        "tokens_per_s": _r(done / seconds, 2) if seconds > 0 else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return _r(a / b, 3) if a is not None and b else None


def _versus(canary: dict[str, Any], stable: dict[str, Any]) -> dict[str, Any]:
    rate = (canary["server_error_rate"], stable["server_error_rate"])
    ci = (canary["server_error_rate_ci95"], stable["server_error_rate_ci95"])
    return {
        "server_error_rate_diff": _r(rate[0] - rate[1]) if None not in rate else None,
        # intervals that do not overlap: a difference the counts support, not noise
        "error_rates_differ": bool(ci[0] and ci[1] and (ci[0][0] > ci[1][1] or ci[1][0] > ci[0][1])),
        **{f"latency_p{q}_ratio": _ratio(canary["latency_s"][f"p{q}"], stable["latency_s"][f"p{q}"])
           for q in PERCENTILES},
        "completion_tokens_mean_ratio": _ratio(canary["completion_tokens_mean"], stable["completion_tokens_mean"]),
        "tokens_per_s_ratio": _ratio(canary["tokens_per_s"], stable["tokens_per_s"]),
    }


def _roles(log: LogContents) -> dict[str, str]:
    """Each model's role, the latest start line's word last (a model may change role between runs)."""
    roles: dict[str, str] = {}
    for start in log.starts:
        for m in start.get("models") or []:
            if isinstance(m, dict) and isinstance(m.get("model"), str):
                roles[m["model"]] = str(m.get("role"))
    for r in log.requests:
        if isinstance(r.get("model"), str) and r.get("role"):
            roles.setdefault(r["model"], r["role"])
    return roles


def compare(path: Path) -> dict[str, Any]:
    log = read_log(path)
    roles = _roles(log)
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in log.requests:
        if isinstance(r.get("model"), str):
            by_model.setdefault(r["model"], []).append(r)
    models = [model_summary(m, roles.get(m), rows) for m, rows in by_model.items()]
    models.sort(key=lambda s: (s["role"] != "stable", s["model"]))
    split = [r for r in log.requests if isinstance(r.get("model"), str) and not r.get("pinned")]
    canary_split = sum(1 for r in split if r.get("role") == "canary")
    shares = [s.get("share") for s in log.starts if s.get("share") is not None]
    out: dict[str, Any] = {
        "log": str(path), "server_starts": len(log.starts), "requests": len(log.requests),
        "unrouted": sum(1 for r in log.requests if not isinstance(r.get("model"), str)),
        "unreadable_lines": log.bad_lines[:20], "models": models,
        "canary_share": {"configured": shares[-1] if shares else None,
                         "observed_requests": _r(canary_split / len(split)) if split and shares else None},
    }
    stable = [s for s in models if s["role"] == "stable"]
    canaries = [s for s in models if s["role"] == "canary"]
    if stable and canaries:
        out["canary_vs_stable"] = {c["model"]: _versus(c, stable[0]) for c in canaries}
    return out
