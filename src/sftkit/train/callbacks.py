"""Trainer callbacks: metrics.jsonl, a rich progress line, and the loss-curve PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

_KEEP = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch", "num_input_tokens_seen")
# what TRL's preference trainers log beside the loss (rewards/margins, logps/chosen, nll_loss, ...; eval_ too)
_KEEP_STAGE = ("rewards/", "logps/", "eval_rewards/", "eval_logps/", "nll_loss", "log_odds", "kl")


class MetricsLogger(TrainerCallback):
    """Appends every log event to ``metrics.jsonl`` (append: a resumed run continues the file)."""

    def __init__(self, path: Path, tokens_per_step: float) -> None:
        self.path = path
        self.tokens_per_step = tokens_per_step
        self._t0 = time.perf_counter()
        self._step0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0 = time.perf_counter()
        self._step0 = state.global_step
        if self.path.exists() and args.should_save:  # the process that writes this copy of the run folder
            # resuming: drop log lines written after the checkpoint we resume from (and a line cut
            # short by the kill or a full disk); starting over (step 0): drop the stale lines
            keep = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= state.global_step]
            self.path.write_text("".join(k + "\n" for k in keep))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not args.should_save or not logs:  # rank 0; with per-node storage each node's local rank 0
            return
        row: dict[str, Any] = {"step": state.global_step}
        for k in _KEEP:
            if k in logs:
                row["lr" if k == "learning_rate" else k] = logs[k]
        row.update({k: v for k, v in logs.items() if k.startswith(_KEEP_STAGE) and isinstance(v, int | float)})
        if "loss" in row:
            elapsed = time.perf_counter() - self._t0
            steps = max(1, state.global_step - self._step0)
            row["tokens_per_s"] = round(self.tokens_per_step * steps / elapsed, 1) if elapsed > 0 else None
        if set(row) - {"step", "epoch"}:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class RichProgress(TrainerCallback):
    """One progress bar: step, loss, learning rate, tokens/s, ETA."""

    def __init__(self, console: Console, tokens_per_step: float) -> None:
        self.console = console
        self.tokens_per_step = tokens_per_step
        self.progress: Progress | None = None
        self.task: Any = None
        self._stats = {"loss": float("nan"), "lr": 0.0, "eval": None}
        self._t0 = 0.0
        self._step0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self._t0, self._step0 = time.perf_counter(), state.global_step

    def _info(self, step: int) -> str:
        s = self._stats
        rate = self.tokens_per_step * (step - self._step0) / max(1e-9, time.perf_counter() - self._t0)
        ev = f" eval {s['eval']:.4f}" if s["eval"] is not None else ""
        return f"loss {s['loss']:.4f} lr {s['lr']:.2e} {rate:,.0f} tok/s{ev}"

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, info=self._info(state.global_step))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs:
            if "loss" in logs:
                self._stats["loss"] = logs["loss"]
            if "learning_rate" in logs:
                self._stats["lr"] = logs["learning_rate"]
            if "eval_loss" in logs:
                self._stats["eval"] = logs["eval_loss"]

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, info=self._info(state.global_step))
            self.progress.stop()
            self.progress = None


COMPLETE = "sftkit_complete.json"


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it.

    The Trainer writes checkpoint folders in place; a kill during a save leaves a
    partial folder that looks like a checkpoint. Resuming only ever picks folders
    carrying this marker, written last.
    """

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        _every_rank_saved()
        if not args.should_save:  # rank 0; with per-node storage each node's local rank 0
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            tmp = folder / f".{COMPLETE}.tmp"
            tmp.write_text(json.dumps({"step": state.global_step}))
            tmp.replace(folder / COMPLETE)


def _every_rank_saved() -> None:
    """Many ranks: each writes its own part of a checkpoint (its RNG state, its ZeRO shard); the
    marker may only say "complete" once all of them are on disk."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint with a completion marker (None if there is none)."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).is_file() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _parsed(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The log rows; a line cut short (the process was killed or the disk filled mid-write) is skipped."""
    if not path.exists():
        return []
    rows = (_parsed(ln) for ln in path.read_text(errors="replace").splitlines() if ln.strip())
    return [r for r in rows if r is not None]


def plot_loss(metrics_path: Path, out: Path) -> Path | None:
    """Train and validation loss against step, as a PNG."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def print_summary(console: Console, run_dir: Path, summary: dict[str, Any]) -> None:
    """The one-screen end of a run: how long, how much, how good, and where the files are."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")  # paths are meant to be copied: never cut with an ellipsis
    mins, secs = divmod(summary["train_seconds"], 60)
    t.add_row("time", f"{int(mins)} min {secs:.0f} s, {summary['global_step']} optimizer steps")
    if summary.get("tokens"):
        rate = summary.get("session_tokens", summary["tokens"]) / max(summary["train_seconds"], 1e-9)
        t.add_row("tokens", f"{summary['tokens']:,} tokens processed ({rate:,.0f}/s)")
    if summary.get("train_loss") is not None:
        t.add_row("train loss", f"{summary['train_loss']:.4f} (mean over the run)")
    if summary.get("best_eval_loss") is not None:
        where = f" at {Path(summary['best_checkpoint']).name}" if summary.get("best_checkpoint") else ""
        t.add_row("best eval loss", f"{summary['best_eval_loss']:.4f}{where}")
    for d in summary.get("diagnostics") or []:  # details in diagnostics.json and the report
        t.add_row("[yellow]diagnosis[/]", f"[yellow]{escape(d['title'])}[/] (step {d['step']})")
    t.add_row("trainable", f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters")
    if summary.get("plan"):  # what sftkit chose for this device (reasons: train_summary.json, config.yaml)
        t.add_row("plan", ", ".join(f"{k} {v}" for k, v in summary["plan"].items()))
    files = [("weights", summary["final"]), ("report", run_dir / "report.html"), ("metrics", run_dir / "metrics.jsonl"),
             ("diagnostics", run_dir / "diagnostics.json"),
             ("loss curve", run_dir / "loss.png"), ("rejected rows", run_dir / "rejected.jsonl")]
    for name, path in files:
        if Path(path).exists():
            t.add_row(name, str(path))
    t.add_row("next", f"sft eval {run_dir}\nsft chat {run_dir}\nsft export {run_dir} --out DIR")
    console.print(Panel(t, title=f"run finished: {run_dir.name}", expand=False))
