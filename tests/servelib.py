"""Helpers shared by the server tests: a real uvicorn server on a free local port,
and the tiny model as a generation engine."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn in a daemon thread; ``url`` is the API base (…/v1)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def health(self) -> dict:
        import httpx

        return httpx.get(self.root + "/health", timeout=10).json()


def tiny_engine(tiny_model_dir: Path, context: int) -> Any:
    """The tiny architecture with larger random weights so answers differ per
    prompt (at the default init every prompt decodes to the same token), and a
    short context so "prompt too long" is cheap to provoke."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from sftkit.hub.models import load_tokenizer
    from sftkit.infer.engine import Engine, build_renderer

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(tiny_model_dir, initializer_range=0.1, max_position_embeddings=context)
    tok = load_tokenizer(tiny_model_dir)
    return Engine(LlamaForCausalLM(cfg).eval(), tok, build_renderer(tok), batch_size=16)
