"""What a run folder says about itself: status, progress, curves, logs, results.

Status comes from facts only:

* ``running``: the job process recorded in ``console_job.json`` is alive (pid checked, and
  its command line names this run);
* ``finished`` / ``failed`` / ``stopped``: the outcome the job wrote into ``console_state.json``
  when its last step ended (exit codes per step kept); a job that died without writing it is
  ``stopped`` if Stop had been pressed (``console_stop.json``), else ``failed``;
* a run not started by the console (``sft train`` in a terminal): ``finished`` when
  ``train_summary.json`` exists, else ``incomplete`` (no process is known to be writing it).
"""

from __future__ import annotations

import codecs
import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

from sftkit.console import heavy
from sftkit.console.jobs import JOB, LAUNCH, LOG, STATE, STOP, Jobs, read_json
from sftkit.core.errors import ConfigError
from sftkit.core.results import EvalResult
from sftkit.core.rundir import RunDir
from sftkit.core.yamlio import read_yaml_file

FILES = ("launch.yaml", "config.yaml", "console.log", "metrics.jsonl", "diagnostics.json", "report.html", "eval.json",
         "eval_predictions.jsonl", "train_summary.json", "data_report.json", "rejected.jsonl",
         "template_check.json", "environment.json", "loss.png")
_LOG_TAIL = 64_000


def status(run_dir: Path, jobs: Jobs) -> dict[str, Any]:
    job, state = read_json(run_dir / JOB), read_json(run_dir / STATE) or {}
    stop_asked = (run_dir / STOP).is_file()
    if job:
        if jobs.alive(run_dir):
            return {"status": "running", "step": state.get("step") or "starting", "stopping": stop_asked,
                    "detail": "stop requested" if stop_asked else None}
        if state.get("done"):
            failed_step = state.get("step") if state.get("outcome") == "failed" else None
            rc = state.get("returncode")
            detail = f"{failed_step} exited with code {rc}" if failed_step else None
            return {"status": state.get("outcome", "failed"), "step": state.get("step"), "detail": detail,
                    "returncodes": state.get("returncodes", {})}
        if stop_asked:
            return {"status": "stopped", "step": state.get("step"), "detail": "killed after a stop request"}
        return {"status": "failed", "step": state.get("step"),
                "detail": "the job process ended without recording an exit code (killed?)"}
    if (run_dir / "train_summary.json").is_file():
        return {"status": "finished", "step": None, "detail": "trained outside the console"}
    return {"status": "incomplete", "step": None,
            "detail": "no train_summary.json, and no console job: started with `sft train` elsewhere, or killed"}


def complete_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``sft train --resume`` would continue from (``sftkit.train.callbacks`` decides;
    imported here, not at the top: it loads transformers, which the list of runs does not need)."""

    heavy.ensure()
    from sftkit.train.callbacks import last_complete_checkpoint

    return last_complete_checkpoint(run_dir / "checkpoints")


def read_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config ``sft train`` wrote, else the console's launch.yaml."""
    for p in (RunDir(run_dir).config, run_dir / LAUNCH):
        if p.is_file():
            try:
                data = read_yaml_file(p, "run config")
            except ConfigError:  # not this one (hand-edited, not UTF-8, an alias bomb): the next
                continue
            if isinstance(data, dict):
                return data
    return {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a half-written last line (a live run) is skipped."""
    return metrics_since(run_dir, 0, None)["rows"]


def total_steps(cfg: dict[str, Any], data_report: dict[str, Any] | None) -> dict[str, Any]:
    """Optimizer steps the run will take: max_steps, or epochs x batches (approximate with packing)."""
    t = cfg.get("train") or {}
    if isinstance(t.get("max_steps"), int) and t["max_steps"] > 0:
        return {"total": t["max_steps"], "approx": False}
    n = (data_report or {}).get("train_examples")
    if not isinstance(n, int) or n <= 0:
        return {"total": None, "approx": True}
    batch, accum = int(t.get("per_device_train_batch_size", 8)), int(t.get("gradient_accumulation_steps", 1))
    per_epoch = max(1, math.ceil(math.ceil(n / batch) / accum))
    return {"total": math.ceil(float(t.get("num_train_epochs", 3.0)) * per_epoch), "approx": bool(t.get("packing"))}


def _last(rows: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(rows) if r.get(key) is not None), None)


def summary(run_dir: Path, jobs: Jobs) -> dict[str, Any]:
    """One row of the runs list."""
    cfg = read_config(run_dir)
    rows = read_metrics(run_dir)
    st = status(run_dir, jobs)
    done = read_json(run_dir / "train_summary.json") or {}
    return {
        "name": run_dir.name,
        **st,
        "model": (cfg.get("model") or {}).get("name_or_path"),
        "method": (cfg.get("method") or {}).get("type", "lora"),
        "step": _last(rows, "step") or done.get("global_step") or 0,
        "steps": total_steps(cfg, read_json(run_dir / "data_report.json")),
        "loss": _last(rows, "loss"),
        "eval_loss": _last(rows, "eval_loss"),
        "tokens_per_s": _last(rows, "tokens_per_s"),
        "updated": _updated(run_dir),
        "has_report": (run_dir / "report.html").is_file(),
        "has_eval": RunDir(run_dir).eval_results.is_file(),
        "trained": (run_dir / "adapter").is_dir() or (run_dir / "model").is_dir(),
        "stage": st.get("step"),
    }


def _updated(run_dir: Path) -> float:
    """Newest modification time in the folder; files may vanish meanwhile (checkpoint rotation,
    the trainer's temporary folders), which must not fail the listing."""
    newest = run_dir.stat().st_mtime
    for p in run_dir.iterdir():
        try:
            newest = max(newest, p.stat().st_mtime)
        except OSError:
            continue
    return newest


def _eval_headline(ev: EvalResult | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    up = sum(1 for f in ev.flips if f.get("direction") == "wrong_to_right")
    return {"model": ev.model, "baseline": ev.baseline, "delta": ev.delta, "n": ev.n, "primary": ev.primary,
            "data": getattr(ev, "data", None), "flips": {"wrong_to_right": up, "right_to_wrong": len(ev.flips) - up}}


def detail(run_dir: Path, jobs: Jobs) -> dict[str, Any]:
    """Everything the run page shows apart from the live curves and the log."""
    out = summary(run_dir, jobs)
    launch = run_dir / LAUNCH
    cfg_file = launch if launch.is_file() else RunDir(run_dir).config
    job = read_json(run_dir / JOB) or {}
    running = out["status"] == "running"
    # Only a run that may be resumed needs the checkpoint check (it loads transformers).
    maybe_resume = not running and not (run_dir / "train_summary.json").is_file() and (run_dir / "checkpoints").is_dir()
    ckpt = complete_checkpoint(run_dir) if maybe_resume else None
    out.update(
        config_file=cfg_file.name if cfg_file.is_file() else None,
        config_yaml=cfg_file.read_text(encoding="utf-8") if cfg_file.is_file() else "",
        command=(job.get("commands") or {}).get("train") or (f"sft train {run_dir / cfg_file.name}"
                                                            if cfg_file.is_file() else None),
        commands=job.get("commands") or {},
        train_summary=read_json(run_dir / "train_summary.json"),
        diagnostics=_diagnostics(RunDir(run_dir)),
        eval=_eval_headline(RunDir(run_dir).eval_result()),
        data=_data_summary(read_json(run_dir / "data_report.json")),
        checkpoint=ckpt.name if ckpt else None,
        can_stop=running,
        can_resume=ckpt is not None,
        can_evaluate=not running and out["trained"],
        files=[f for f in FILES if (run_dir / f).is_file()],
    )
    return out


def _diagnostics(folder: RunDir) -> list[dict[str, Any]]:
    """What the loss curves say (sftkit.train.diagnose), live while the run trains."""
    data = read_json(folder.diagnostics) or {}
    found = data.get("findings") if isinstance(data, dict) else None
    keys = ("kind", "step", "title", "message", "causes", "actions")
    return [{k: f.get(k) for k in keys} for f in found or [] if isinstance(f, dict)]


def _data_summary(rep: dict[str, Any] | None) -> dict[str, Any] | None:
    if not rep:
        return None
    keys = ("train_examples", "val_examples", "rejected", "truncated", "train_tokens")
    return {k: rep.get(k) for k in keys if k in rep}


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def metrics_since(run_dir: Path, offset: int, digest: str | None) -> dict[str, Any]:
    """New complete lines of metrics.jsonl after byte ``offset``.

    ``digest`` is what the previous answer returned for the bytes up to ``offset``; when the
    file changed below it (a resume rewrites metrics.jsonl back to its checkpoint), the whole
    file is sent again with ``reset: true``."""
    import json

    p = run_dir / "metrics.jsonl"
    data = p.read_bytes() if p.is_file() else b""
    reset = offset <= 0 or offset > len(data) or digest != _digest(data[:offset])
    start = 0 if reset else offset
    end = data.rfind(b"\n") + 1  # a half-written last line waits for the next poll
    end = max(end, start)
    rows = []
    for line in data[start:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return {"rows": rows, "offset": end, "digest": _digest(data[:end]), "reset": reset}


def log_since(run_dir: Path, offset: int) -> dict[str, Any]:
    """console.log from byte ``offset`` (or its last 64 kB when ``offset`` is negative or stale)."""
    p = run_dir / LOG
    if not p.is_file():
        return {"text": "", "offset": 0, "size": 0}
    size = p.stat().st_size
    if offset < 0 or offset > size:
        offset = max(0, size - _LOG_TAIL)
    with p.open("rb") as f:
        f.seek(offset)
        data = f.read(min(size - offset, 4 * _LOG_TAIL))
    # A UTF-8 character cut in half at the end (Chinese is 3 bytes a character) waits for the next poll.
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data, final=False)
    data = data[: len(data) - len(decoder.getstate()[0])]
    return {"text": text, "offset": offset + len(data), "size": size}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.learning_rate": 0.001, ...}; lists stay values."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def compare(run_dirs: list[Path], jobs: Jobs) -> dict[str, Any]:
    """Configs (with the keys that differ), curves and results of several runs."""
    configs = {p.name: flatten(read_config(p)) for p in run_dirs}
    keys = sorted({k for c in configs.values() for k in c})
    differ = [k for k in keys if len({yaml.safe_dump(c.get(k)) for c in configs.values()}) > 1]
    runs = []
    for p in run_dirs:
        d = detail(p, jobs)
        runs.append({"name": p.name, "status": d["status"], "train_summary": d["train_summary"], "eval": d["eval"],
                     "metrics": read_metrics(p), "config": configs[p.name]})
    return {"runs": runs, "keys": keys, "differ": differ}
