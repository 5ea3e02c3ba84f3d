"""``sft eval`` and ``sft report``: command functions the main app mounts.

Heavy imports (torch, transformers) happen inside the commands so that
``sft --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from sftkit.cli.options import DEVICE_HELP, check_device
from sftkit.core.errors import UsageError
from sftkit.core.rundir import RunDir
from sftkit.evaluate.report import write_report
from sftkit.evaluate.table import comparison_table, print_details
from sftkit.hub.device import check_vllm
from sftkit.hub.models import resolve

err_console = Console(stderr=True)




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
        typer.Option("--metrics",
                     help="Comma list: exact_match,accuracy,f1,bleu,rouge,json,key_facts (default: inferred)."),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Tokens per answer.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N test rows.")] = None,
    forgetting: Annotated[
        bool, typer.Option("--forgetting/--no-forgetting", help="Also score the shipped general-ability set.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")] = False,
    engine: Annotated[str, typer.Option(help="Generation engine: transformers (built in) or vllm (CUDA GPU; "
                                             "no loss/ppl).")] = "transformers",
    device: Annotated[str | None, typer.Option("--device", help=DEVICE_HELP + " Default: a run's eval.device, "
                                                                 "else auto.")] = None,
) -> None:
    """Evaluate a model or run (loss, perplexity, generation metrics), against a baseline."""
    from sftkit.evaluate.runner import evaluate  # heavy: torch

    # before any model is loaded
    if engine not in ("transformers", "vllm"):
        raise UsageError(f"--engine {engine}: use transformers or vllm")
    if engine == "vllm":
        check_vllm()
        if baseline is not None and baseline.strip().lower() not in ("none", "no", "off", ""):
            raise UsageError("--engine vllm compares a run with its own base model (adapter on and off); for "
                             "another --baseline use --engine transformers")

    run = RunDir(model_or_run)
    cfg = run.eval_settings() if run.config.is_file() else {}
    device = device or cfg.get("device") or "auto"
    if engine == "transformers":
        check_device(device)
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else cfg.get("metrics")
    console = err_console if as_json else Console()
    with err_console.status(f"evaluating {model_or_run} ..."):
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
            device=device,
        )
    console.print(comparison_table(result))
    print_details(console, result)
    _write_run_report(model_or_run, console)
    if as_json:
        keep = {k: result.get(k) for k in ("model", "baseline", "delta", "n")}
        sys.stdout.write(json.dumps(keep, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _write_run_report(ref: str, console: Console) -> None:
    """A run folder gets its report.html refreshed with the new evaluation."""

    run_dir = resolve(ref).run_dir
    if run_dir is not None:
        console.print(f"report: {write_report(run_dir)}")


def report_cmd(run: Annotated[str, typer.Argument(help="Run folder.")]) -> None:
    """Write report.html (config, data, loss curves, before/after metrics, flips, latency)."""

    out = write_report(run)
    Console().print(f"wrote {out}")
