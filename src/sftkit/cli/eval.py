"""``sft eval`` and ``sft report``: command functions the main app mounts.

Heavy imports (torch, transformers) happen inside the commands so that
``sft --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

err_console = Console(stderr=True)


@contextmanager
def _fatal() -> Iterator[None]:
    """User-facing problems become one red line on stderr and exit code 2."""
    from sftkit.data import DataError
    from sftkit.hub.models import ModelNotFound
    from sftkit.templates.base import TemplateError

    try:
        yield
    except (DataError, ModelNotFound, TemplateError, ValueError, OSError) as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def _run_eval_defaults(model_or_run: str) -> dict[str, Any]:
    """The run's ``eval:`` config section (CLI options override it)."""
    p = Path(model_or_run)
    if not (p / "config.yaml").is_file():
        return {}
    from sftkit.core.config import read_yaml_file

    return (read_yaml_file(p / "config.yaml", "run config") or {}).get("eval") or {}


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


def _extras(console: Console, result: dict[str, Any]) -> None:
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
    from sftkit.evaluate.metrics import headline_metric

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


def eval_cmd(
    model_or_run: Annotated[str, typer.Argument(help="Run folder or model reference.")],
    data: Annotated[
        str | None, typer.Option("--data", help="Test file (any layout); default: the run's data.test.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Baseline model; default: a run's base model; 'none' disables.")
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", help="Comma list: exact_match,accuracy,f1,bleu,rouge,json (default: inferred)."),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Tokens per answer.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N test rows.")] = None,
    forgetting: Annotated[
        bool, typer.Option("--forgetting/--no-forgetting", help="Also score the shipped general-ability set.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")] = False,
    engine: Annotated[str, typer.Option(help="Generation engine: transformers (built in) or vllm (CUDA GPU; "
                                             "no loss/ppl).")] = "transformers",
) -> None:
    """Evaluate a model or run (loss, perplexity, generation metrics), against a baseline."""
    from sftkit.evaluate.runner import evaluate
    from sftkit.train.accel import AcceleratorUnavailable, check_vllm

    try:  # before any model is loaded
        if engine not in ("transformers", "vllm"):
            raise AcceleratorUnavailable(f"--engine {engine}: use transformers or vllm")
        if engine == "vllm":
            check_vllm()
            if baseline is not None and baseline.strip().lower() not in ("none", "no", "off", ""):
                raise AcceleratorUnavailable("--engine vllm compares a run with its own base model (adapter on "
                                             "and off); for another --baseline use --engine transformers")
    except AcceleratorUnavailable as e:
        err_console.print(f"[red]error:[/] {e}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None

    cfg = _run_eval_defaults(model_or_run)
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else cfg.get("metrics")
    console = err_console if as_json else Console()
    with _fatal(), err_console.status(f"evaluating {model_or_run} ..."):
        result = evaluate(
            model_or_run,
            data,
            baseline_ref=baseline,
            metrics=names,
            max_new_tokens=max_new_tokens or cfg.get("max_new_tokens") or 128,
            limit=limit or cfg.get("limit"),
            forgetting=forgetting,
            batch_size=cfg.get("batch_size") or 16,
            engine=engine,
        )
    console.print(comparison_table(result))
    _extras(console, result)
    _write_run_report(model_or_run, console)
    if as_json:
        keep = {k: result.get(k) for k in ("model", "baseline", "delta", "n")}
        sys.stdout.write(json.dumps(keep, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _write_run_report(ref: str, console: Console) -> None:
    """A run folder gets its report.html refreshed with the new evaluation."""
    from sftkit.evaluate.report import write_report
    from sftkit.hub.models import resolve

    run_dir = resolve(ref).run_dir
    if run_dir is not None:
        console.print(f"report: {write_report(run_dir)}")


def report_cmd(run: Annotated[str, typer.Argument(help="Run folder.")]) -> None:
    """Write report.html (config, data, loss curves, before/after metrics, flips, latency)."""
    from sftkit.evaluate.report import write_report

    with _fatal():
        out = write_report(run)
    Console().print(f"wrote {out}")
