"""Helpers for the console tests: data rows, a live uvicorn console, waiting for runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

TOKEN = "test-token-123456"
_Q = ["如何查询用户{}的余额？", "用户{}的余额怎么查？", "我想看看账户{}还有多少钱", "查一下{}号用户的余额"]
ANSWER = "请调用 getUserBalance(userId) 接口。"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": _Q[i % 4].format(i)}, {"role": "assistant", "content": ANSWER}]}
            for i in range(start, start + n)]


def write_jsonl(path: Path, items: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items) + extra, encoding="utf-8")
    return path


class LiveConsole:
    """The console app in uvicorn on a daemon thread; ``client`` is an httpx client for it."""

    def __init__(self, runs: Path, base: Path, token: str | None = None, host: str = "127.0.0.1",
                 allow: tuple[Path, ...] = ()) -> None:
        import uvicorn

        from sftkit.console.app import create_app

        extra = {"allow": allow} if allow else {}  # only when asked: create_app before 'allow' had none
        self.app = create_app(runs=runs, base=base, token=token, host=host, **extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=120)

    @property
    def state(self):
        return self.app.state.console

    def __enter__(self) -> LiveConsole:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("console server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_jobs(self.state.jobs.started_here())
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)




def stop_jobs(run_dirs: list[Path]) -> None:
    """Kill the job process groups a test left running (by the pid the console recorded)."""
    for run_dir in run_dirs:
        job = json.loads((run_dir / "console_job.json").read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job["pid"], signal.SIGKILL)




def wait_for(pred: Callable[[], object], timeout: float, what: str, every: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")




def run_yaml(name: str, model: Path, steps: int, *, method: str = "lora", lr: float = 1e-3, test: bool = False,
             extra_train: str = "") -> str:
    """A config for the tiny model: a few steps, every step logged."""
    return (f"name: {name}\nmodel:\n  name_or_path: {model}\n"
            f"data:\n  train: train.jsonl\n{'  test: test.jsonl' + chr(10) if test else ''}  cutoff_len: 80\n"
            f"method:\n  type: {method}\n"
            f"train:\n  max_steps: {steps}\n  learning_rate: {lr}\n  logging_steps: 1\n  warmup_ratio: 0.0\n"
            f"  per_device_train_batch_size: 8\n{extra_train}"
            "eval:\n  max_new_tokens: 8\n  forgetting_check: false\n")


