"""``sft console``: serve the web console (imports of FastAPI and uvicorn wait until it runs)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sftkit.cli.options import DEVICE_HELP, check_device
from sftkit.core.errors import UsageError

err = Console(stderr=True, highlight=False)


def _port_free(host: str, port: int) -> str | None:
    """None when ``host:port`` can be bound, else the reason (checked first: one clear sentence
    instead of uvicorn's log line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def console_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 7860,
    runs: Annotated[Path, typer.Option(help="Folder holding the run folders (created if missing).")] = Path("runs"),
    token: Annotated[str | None, typer.Option(
        help="Access token for the page and API (default: a new random one, in the URL printed at start).")]
    = None,
    allow: Annotated[list[Path] | None, typer.Option(
        help="A further folder the page may read (e.g. where your models are); repeatable. The console reads "
             "only the folder it starts in, the runs folder and these.")] = None,
    device: Annotated[str, typer.Option("--device", help="Chat: " + DEVICE_HELP)] = "auto",
) -> None:
    """Web console: configure, launch, watch and compare runs, and chat with the result."""
    try:
        import uvicorn

        from sftkit.console.app import create_app, is_loopback
    except ImportError:
        raise UsageError("sft console needs fastapi and uvicorn: pip install 'sftkit-llm[serve]'") from None
    if token is not None and len(token) < 8:
        raise UsageError("--token must be at least 8 characters")
    check_device(device)
    # Always a token, loopback too: any local user (a shared GPU box) can reach 127.0.0.1, and the
    # API can start code. The printed URL carries it; opening it moves it into a cookie.
    token = token or secrets.token_urlsafe(18)
    problem = _port_free(host, port)
    if problem:
        raise UsageError(f"cannot listen on {host}:{port} ({problem}); pick another --port")
    app = create_app(runs=runs, token=token, host=host, warm_up=True, allow=tuple(allow or ()), device=device)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/?token={token}"
    # stdout, one line, so scripts (and the tests) can read the address and the token
    print(f"sftkit console: {url}  (runs: {app.state.console.ws.runs})", flush=True)
    if not is_loopback(host):
        err.print(f"access token: {token} (every API request needs it; the URL above sets it in the browser)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
