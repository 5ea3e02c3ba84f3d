"""An evaluation result as rich tables: the before/after comparison and the details under it
(flips, latency, per label, per task, skipped rows, the general-ability check)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sftkit.core.results import headline_metric


def _num(v: Any, key: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:+.4g}" if key == "delta" else f"{v:.4g}"
    return str(v)


def _delta_style(metric: str, d: Any) -> str:
    if not isinstance(d, int | float) or d == 0 or metric in ("gen_tokens_per_s", "mean_completion_tokens"):
        return ""
    better = d < 0 if metric in ("loss", "ppl") else d > 0
    return "green" if better else "red"


def comparison_table(result: dict[str, Any]) -> Table:
    base = bool(result.get("baseline"))
    t = Table(title=f"Evaluation on {result.get('n')} examples", title_justify="left")
    t.add_column("metric")
    if base:
        t.add_column("baseline", justify="right")
    t.add_column("model", justify="right")
    if base:
        t.add_column("delta", justify="right")
    for k, v in result.get("model", {}).items():
        if not (isinstance(v, int | float) or v is None):
            continue
        row = [k]
        if base:
            row.append(_num(result["baseline"].get(k), k))
        row.append(_num(v, k))
        if base:
            d = result.get("delta", {}).get(k)
            style = _delta_style(k, d)
            row.append(f"[{style}]{_num(d, 'delta')}[/]" if style else _num(d, "delta"))
        t.add_row(*row)
    return t


def print_details(console: Console, result: dict[str, Any]) -> None:
    flips = result.get("flips") or []
    if result.get("baseline"):
        up = sum(f["direction"] == "wrong_to_right" for f in flips)
        console.print(f"flips: [green]{up} wrong→right[/], [red]{len(flips) - up} right→wrong[/]")
    lat = result.get("latency") or {}
    if lat.get("n") and lat.get("k_s_per_token") is not None:
        console.print(
            f"latency: t ≈ {lat['k_s_per_token']:.4f}·tokens + {lat['b_s']:.3f} s (fit over {lat['n']} requests)"
        )
    _per_label(console, result)
    _per_task(console, result)
    skipped = result.get("skipped") or []
    if skipped:
        first = "; ".join(f"{x['source']}: {x['reason']}" for x in skipped[:3])
        console.print(f"[yellow]{len(skipped)} test row(s) not scored[/] ({first}{' ...' if len(skipped) > 3 else ''})")
    fg = result.get("forgetting") or {}
    if "model" in fg:
        line = f"general check ({fg['n']} questions): model {fg['model']:.0%}"
        if "baseline" in fg:
            line += f", baseline {fg['baseline']:.0%}"
        console.print(line)


def _per_task(console: Console, result: dict[str, Any]) -> None:
    tasks = result.get("per_task") or {}
    if not tasks:
        return
    base = bool(result.get("baseline"))
    t = Table(title="Per task", title_justify="left")
    for c in ("task", "n", "metric", *(["baseline"] if base else []), "model"):
        t.add_column(c, justify="left" if c in ("task", "metric") else "right")
    for task, e in tasks.items():
        k = headline_metric(e["model"])
        if k is None:
            continue
        row = [task, str(e["n"]), k, *([_num(e["baseline"].get(k), k)] if base else []), _num(e["model"][k], k)]
        t.add_row(*row)
    console.print(t)


def _per_label(console: Console, result: dict[str, Any]) -> None:
    cls = ((result.get("details") or {}).get("model") or {}).get("classification")
    if not cls or not cls.get("per_label"):
        return
    t = Table(title="Per label (model)", title_justify="left")
    for c in ("label", "precision", "recall", "F1", "support"):
        t.add_column(c, justify="left" if c == "label" else "right")
    for lab, v in cls["per_label"].items():
        t.add_row(lab or "(empty)", *(f"{v[k]:.3f}" for k in ("precision", "recall", "f1")), f"{int(v['support'])}")
    console.print(t)
