"""Start and stop the job process of a run (``sftkit.console.job``), and tell whether it lives.

Files the console adds to a run folder:

* ``launch.yaml``: the config the run trains with (``sft train <run>/launch.yaml`` is the same run);
* ``console.log``: the output of every step (train, eval, report), appended across resumes;
* ``console_job.json``: the job's pid, start time and command lines, written when it starts;
* ``console_state.json``: written by the job: the current step, exit codes, and the outcome when done;
* ``console_stop.json``: written when Stop is pressed (so a killed job reads as stopped, not failed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sftkit.console.errors import conflict
from sftkit.console.job import STATE, command, write_json

JOB = "console_job.json"
STOP = "console_stop.json"
LOG = "console.log"
LAUNCH = "launch.yaml"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _proc_alive(pid: int, run_dir: Path) -> bool:
    """True when ``pid`` is a live (not zombie) job process of ``run_dir``.

    The command line is checked too: after a reboot or a long time the pid may belong to
    another program, which must not make a dead run look alive (or receive its Stop)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not ours
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc (macOS): the signal check is all there is
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and b"sftkit.console.job" in argv and str(run_dir).encode() in argv


class Jobs:
    """The job processes this console started (others, from an earlier console, are found by pid)."""

    def __init__(self) -> None:
        self._procs: dict[Path, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def alive(self, run_dir: Path) -> bool:
        with self._lock:
            return self._running(run_dir)

    def start(self, run_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
        """Start the job for ``spec`` (steps, config, resume, ...). Refuses if one is running."""
        with self._lock:
            if self._running(run_dir):
                raise conflict(f"run {run_dir.name!r} is already running; stop it first")
            for stale in (STATE, STOP):
                (run_dir / stale).unlink(missing_ok=True)
            # Unbuffered, so the log follows the run; wide, so rich does not wrap paths in console.log.
            cols = os.environ.get("COLUMNS", "")
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": str(max(160, int(cols) if cols.isdigit() else 0))}
            with (run_dir / LOG).open("ab") as log:
                # A new session: the job leads its own process group, so Stop reaches it and
                # its children, and closing the console (Ctrl-C in its terminal) does not.
                proc = subprocess.Popen(
                    [sys.executable, "-m", "sftkit.console.job", str(run_dir), json.dumps(spec)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,
                )
            self._procs[run_dir] = proc
            job = {"pid": proc.pid, "started": time.time(), "steps": spec["steps"],
                   "commands": {s: " ".join(["sft", *command(s, run_dir, spec)[3:]]) for s in spec["steps"]}}
            write_json(run_dir / JOB, job)
        threading.Thread(target=self._reap, args=(run_dir, proc), daemon=True).start()
        return job

    def _running(self, run_dir: Path) -> bool:
        proc = self._procs.get(run_dir)
        if proc is not None:
            return proc.poll() is None
        job = read_json(run_dir / JOB)
        return bool(job and isinstance(job.get("pid"), int) and _proc_alive(job["pid"], run_dir))

    def _reap(self, run_dir: Path, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()  # no zombie left behind; the job itself has recorded the outcome

    def stop(self, run_dir: Path, force: bool = False) -> dict[str, Any]:
        """SIGINT to the job's process group (like Ctrl-C); ``force``: SIGKILL."""
        job = read_json(run_dir / JOB)
        if not job or not self.alive(run_dir):
            raise conflict(f"run {run_dir.name!r} is not running")
        sig = signal.SIGKILL if force else signal.SIGINT
        write_json(run_dir / STOP, {"at": time.time(), "signal": sig.name})
        try:
            os.killpg(int(job["pid"]), sig)
        except ProcessLookupError:
            raise conflict(f"run {run_dir.name!r} ended before it could be stopped") from None
        return {"signal": sig.name, "pid": job["pid"]}

    def started_here(self) -> list[Path]:
        with self._lock:
            return [p for p, proc in self._procs.items() if proc.poll() is None]
