"""The process the console starts for a run: ``python -m sftkit.console.job RUN_DIR STEP ...``.

It runs the steps one after another as the CLI would (``sft train``, then ``sft eval``,
then ``sft report``), each as a child in the same process group, with their output going
to ``console.log``, and records what happened in ``console_state.json``: the current step,
every step's exit code, and at the end ``done`` with the outcome. Because this process
(not the web server) waits for the children, a run's outcome is recorded even when the
console is closed while it trains.

Stop: the console sends SIGINT to the process group; the training child gets it like a
Ctrl-C in a terminal, and this process notes that a stop was asked for (so the run is
"stopped", not "failed") and starts no further step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STATE = "console_state.json"
STEPS = ("train", "eval", "report")


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def command(step: str, run_dir: Path, args: dict[str, Any]) -> list[str]:
    """The CLI command line of one step (the same a user would type)."""
    cli = [sys.executable, "-m", "sftkit.cli"]
    if step == "train":
        cmd = [*cli, "train", str(args["config"]), *args.get("overrides", [])]
        if args.get("resume"):
            cmd += ["--resume", "auto"]
        if args.get("force"):
            cmd.append("--force")
        return cmd
    if step == "eval":
        cmd = [*cli, "eval", str(run_dir), *([] if args.get("forgetting", True) else ["--no-forgetting"])]
        return cmd + (["--baseline", str(args["baseline"])] if args.get("baseline") else [])
    if step == "report":
        return [*cli, "report", str(run_dir)]
    raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")


class _Stop:
    """Remembers a SIGINT/SIGTERM; the children got the same signal (it goes to the group)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        self.signal = signum


def run_steps(run_dir: Path, steps: list[str], args: dict[str, Any]) -> int:
    state: dict[str, Any] = {"pid": os.getpid(), "steps": steps, "step": None, "returncodes": {},
                             "done": False, "started": time.time()}
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)  # a handler (not SIG_IGN): children start with the default again
    signal.signal(signal.SIGTERM, stop)
    rc = 0
    for step in steps:
        if stop.signal is not None:
            break
        cmd = command(step, run_dir, args)
        state["step"] = step
        write_json(run_dir / STATE, state)
        print(f"\n== sftkit console: {step}: sft {' '.join(cmd[3:])}  [{time.strftime('%H:%M:%S')}]", flush=True)
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        rc = child.wait()  # a signal handler runs and the wait resumes (PEP 475)
        state["returncodes"][step] = rc
        print(f"== sftkit console: {step} exited with code {rc}  [{time.strftime('%H:%M:%S')}]", flush=True)
        if rc != 0 or stop.signal is not None:
            break
    state.update(done=True, ended=time.time(), returncode=rc, stopped=stop.signal is not None)
    state["outcome"] = "stopped" if state["stopped"] else ("finished" if rc == 0 else "failed")
    write_json(run_dir / STATE, state)
    return rc


def main(argv: list[str]) -> int:
    """``RUN_DIR ARGS_JSON``: the steps and their options, written by the console."""
    run_dir = Path(argv[0])
    spec = json.loads(argv[1])
    return run_steps(run_dir, list(spec["steps"]), spec)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
