"""``sft serve-report LOG``: compare the models a server answered with, from its request log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sftkit.infer.requestlog import DEFAULT_PATH
from sftkit.infer.servereport import compare

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _rate_cell(rate: float | None, ci: list[float] | None) -> str:
    return f"{_f(rate, '{:.2%}')} ({_f(ci[0], '{:.1%}')}-{_f(ci[1], '{:.1%}')})" if ci else "-"


def _table(report: dict[str, Any]) -> Table:
    t = Table(title=f"{report['requests']} requests in {report['log']}")
    for col in ("model", "role", "requests", "4xx", "5xx", "5xx rate (95% CI)", "latency p50/p90/p99 s",
                "first token p50 s", "tokens in/out", "tokens/s"):
        t.add_column(col, justify="left" if col in ("model", "role") else "right")
    for m in report["models"]:
        ci = m["server_error_rate_ci95"]
        lat = m["latency_s"]
        t.add_row(escape(m["model"]), m["role"] or "-", str(m["requests"]), str(m["client_errors"]),
                  str(m["server_errors"]),
                  _rate_cell(m["server_error_rate"], ci),
                  f"{_f(lat['p50'])}/{_f(lat['p90'])}/{_f(lat['p99'])}", _f(m["first_token_s"]["p50"]),
                  f"{_f(m['prompt_tokens_mean'], '{:.0f}')}/{_f(m['completion_tokens_mean'], '{:.0f}')}",
                  _f(m["tokens_per_s"], "{:.1f}"))
    return t


def _verdict_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    share = report["canary_share"]
    if share["configured"] is not None:
        lines.append(f"canary share: {share['configured']:.0%} of users configured; "
                     f"{_f(share['observed_requests'], '{:.1%}')} of the split requests observed")
    for name, v in (report.get("canary_vs_stable") or {}).items():
        differ = "a difference the counts support" if v["error_rates_differ"] else "within noise at these counts"
        ratio = "{:.2f}"
        lines.append(f"{name} vs stable: server error rate {_f(v['server_error_rate_diff'], '{:+.2%}')} "
                     f"({differ}); latency p50 x{_f(v['latency_p50_ratio'], ratio)}, "
                     f"p90 x{_f(v['latency_p90_ratio'], ratio)}; "
                     f"answer length x{_f(v['completion_tokens_mean_ratio'], ratio)}")
    if report["unrouted"]:
        lines.append(f"{report['unrouted']} request(s) were refused before reaching a model (bad body, unknown id)")
    return lines


def serve_report_cmd(
    log: Annotated[Path, typer.Argument(help="A request log of `sft serve` (its --request-log).")] = DEFAULT_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
    = False,
) -> None:
    """Compare the models of a request log: requests, error rates, latency percentiles, tokens (canary vs stable)."""
    report = compare(log)
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    Console().print(_table(report))
    for line in _verdict_lines(report):
        err.print(escape(line))
