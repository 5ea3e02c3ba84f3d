"""Helpers shared by the training tests: a small data set and config on the tiny model,
the saved weights and loss curve of a run, and ``sft`` runs in killable child processes.

Child processes come from a *forkserver* that has imported torch, transformers and
sftkit once: each child is a real, separate process running the real ``sft`` entry
point (``sftkit.cli.main``), so SIGKILL/SIGINT hit it for real, without paying ~10 s
of imports per child. Test-only fault triggers are installed in the child from
``KILL_AT`` (see ``TRIGGERS``); production code has no hooks for them.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def rows(n: int) -> list[dict]:
    return [{"messages": [
        {"role": "user", "content": f"Say {WORDS[i % 8]} {i} times" + " please" * (i % 5)},
        {"role": "assistant", "content": " ".join([WORDS[(i * 3) % 8]] * (1 + i % 6))},
    ]} for i in range(n)]


def weather_config(folder: Path, model_dir: Path, extra: str = "") -> Path:
    """12 short Chinese rows and a 2-step config on ``model_dir`` in ``folder``; ``extra``: more YAML lines
    (indented under ``train:`` when they start with two spaces)."""
    rows = [{"messages": [{"role": "user", "content": f"第{i}个问题：今天天气怎么样？"},
                          {"role": "assistant", "content": "晴天，气温二十度。" * (1 + i % 3)}]} for i in range(12)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                        encoding="utf-8")
    (folder / "cfg.yaml").write_text(
        f"model:\n  name_or_path: {model_dir}\n"
        "data:\n  train: train.jsonl\n  cutoff_len: 128\n"
        "train:\n  max_steps: 2\n  per_device_train_batch_size: 4\n  logging_steps: 1\n  learning_rate: 1.0e-3\n"
        + extra)
    return folder / "cfg.yaml"


def write_workdir(path: Path, model_dir: Path, n_rows: int = 16, train: str = "") -> Path:
    """``train.jsonl`` + ``cfg.yaml`` (full fine-tuning, constant lr, log every step); returns the config."""
    (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n_rows)))
    cfg = path / "cfg.yaml"
    cfg.write_text(
        f"model:\n  name_or_path: {model_dir}\n"
        "data:\n  train: train.jsonl\n  cutoff_len: 128\n"
        "method:\n  type: full\n"
        "train:\n  learning_rate: 1.0e-3\n  lr_scheduler_type: constant\n  warmup_ratio: 0.0\n"
        "  logging_steps: 1\n  max_grad_norm: 0.0\n  group_by_length: false\n  save_total_limit: 3\n" + train
    )
    return cfg


def weights(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def curve(run_dir: Path, digits: int = 5) -> list[tuple[int, float]]:
    lines = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], round(r["loss"], digits)) for r in lines if "loss" in r]


# -- child processes ---------------------------------------------------------------------

@functools.cache
def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "peft", "sftkit.train.recipe", "sftkit.cli", "trainlib"])
    return ctx


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at_step(k: int) -> None:
    from transformers import TrainerCallback

    import sftkit.train.recipe

    class Kill(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == k:
                _kill_self()

    original = sftkit.train.recipe._callbacks
    sftkit.train.recipe._callbacks = lambda *a, **kw: [*original(*a, **kw), Kill()]


def _kill_mid_save(k: int) -> None:
    import io

    import torch

    real_save = torch.save

    def save(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        if str(f).endswith("optimizer.pt") and f"checkpoint-{k}" in str(f):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **kw)
            Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            _kill_self()
        real_save(obj, f, *a, **kw)

    torch.save = save


def _kill_before_marker(k: int) -> None:
    import sftkit.train.callbacks

    real_on_save = sftkit.train.callbacks.CheckpointMarker.on_save

    def on_save(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == k:
            _kill_self()
        real_on_save(self, args, state, control, **kw)

    sftkit.train.callbacks.CheckpointMarker.on_save = on_save


def _kill_final(_: int) -> None:
    real_rename = Path.rename

    def rename(self: Path, target: Any) -> Any:
        if Path(target).name in ("model", "adapter"):
            _kill_self()
        return real_rename(self, target)

    Path.rename = rename  # type: ignore[method-assign]


# ``KILL_AT=kind:K``: where the child SIGKILLs itself.
TRIGGERS = {
    "step": _kill_at_step,  # at the end of optimizer step K
    "mid_save": _kill_mid_save,  # while checkpoint-K is written (optimizer.pt half written)
    "before_marker": _kill_before_marker,  # checkpoint-K fully written, its completion marker not yet
    "final": _kill_final,  # the final model folder written, not yet renamed into place
}


def _child(argv: list[str], cwd: str, log: str, env: dict[str, str]) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(cwd)
    os.environ.update(env)
    if env.get("KILL_AT"):
        kind, _, k = env["KILL_AT"].partition(":")
        TRIGGERS[kind](int(k or -1))
    from sftkit.cli import main

    sys.argv = ["sft", *argv]
    main()


class Child:
    """``sft ARGV`` in a forked child; output goes to ``log``."""

    def __init__(self, argv: list[str], cwd: Path, log: Path, **env: str) -> None:
        self.log = log
        self.proc = _context().Process(target=_child, args=(argv, str(cwd), str(log), env), daemon=True)
        self.proc.start()

    def wait(self, timeout: float = 300) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            raise TimeoutError(f"sft did not finish in {timeout}s; log:\n{self.output()[-3000:]}")
        return self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()

    def output(self) -> str:
        """The log with rich's line wrapping undone (it wraps long paths at the console width)."""
        return self.log.read_text(errors="replace").replace("\n", "") if self.log.exists() else ""


def sft(argv: list[str], cwd: Path, log: Path, timeout: float = 300, **env: str) -> tuple[int, str]:
    c = Child(argv, cwd, log, **env)
    code = c.wait(timeout)
    return code, c.output()


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def logged_step(run_dir: Path) -> int:
    """The last step with a loss line in metrics.jsonl (0 if none yet)."""
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return 0
    steps = [0]
    for ln in p.read_text().splitlines():
        try:
            r = json.loads(ln)
        except ValueError:
            continue  # a line being written
        if "loss" in r:
            steps.append(r["step"])
    return max(steps)
