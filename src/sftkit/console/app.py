"""The console's FastAPI app: the page, its API, and the guards in front of both.

Guards (pure ASGI, before any route runs, so a refused request starts nothing):

* access token: when the console has one, every ``/api/*`` request needs
  ``Authorization: Bearer TOKEN`` or the cookie set by opening ``/?token=TOKEN``; else 401;
* Host header: bound to loopback without a token, only ``localhost``/``127.0.0.1``/``[::1]``
  are served (a web page elsewhere cannot reach the console through DNS rebinding);
* ``POST`` bodies must be ``application/json`` (a cross-site form cannot post to the API);
* a Content-Security-Policy that allows this origin only: the page loads nothing from elsewhere.

Errors are JSON in ``sft serve``'s shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sftkit.console.chat import ChatModels
from sftkit.console.errors import ConsoleError, error_body
from sftkit.console.jobs import Jobs
from sftkit.console.workspace import Workspace

COOKIE = "sftkit_console_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'")


@dataclass
class ConsoleState:
    ws: Workspace
    token: str | None
    host: str
    jobs: Jobs = field(default_factory=Jobs)
    chat: ChatModels = field(default_factory=ChatModels)


def static_dir() -> Path:
    return Path(str(resources.files("sftkit.console") / "static"))


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK or host.startswith("127.")


def _hostname(host: str) -> str:
    """``127.0.0.1:7860`` -> ``127.0.0.1``; ``[::1]:7860`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _json(status: int, message: str, code: str, type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, type_, code=code), status_code=status)


class _Guard:
    """Token, Host and content-type checks, and security headers on every response."""

    def __init__(self, app: ASGIApp, state: ConsoleState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refuse(self, scope: Scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        path: str = scope["path"]
        open_loopback = self.state.token is None and is_loopback(self.state.host)
        if open_loopback and not is_loopback(_hostname(headers.get("host", ""))):
            return _json(403, f"Host {headers.get('host')!r} is not served: the console listens on loopback "
                         "only (open http://127.0.0.1:PORT/)", "host_not_allowed")
        if not path.startswith("/api"):
            return None
        if self.state.token is not None and not self._authorised(headers):
            return _json(401, "missing or wrong access token: open the URL `sft console` printed "
                         "(…/?token=…) or send 'Authorization: Bearer <token>'", "invalid_token",
                         "authentication_error")
        if scope["method"] == "POST" and not headers.get("content-type", "").startswith("application/json"):
            return _json(415, "POST bodies must be JSON (Content-Type: application/json)", "unsupported_media_type")
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        token = (self.state.token or "").encode()
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return True
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == COOKIE and hmac.compare_digest(v.encode(), token):
                return True
        return False


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ConsoleError)
    async def _console(_: Request, e: ConsoleError) -> JSONResponse:
        return JSONResponse(error_body(e.message, param=e.param, code=e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return _json(400, "could not parse the JSON body of the request", "bad_request")
        loc = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path"))
        msg = f"{loc}: {first.get('msg')}" if loc else str(first.get("msg", "invalid request"))
        return JSONResponse(error_body(msg, param=loc or None, code="bad_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _json(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        return _json(500, f"internal error ({type(e).__name__}: {e})", "internal_error", "server_error")


@asynccontextmanager
async def _warm_up(_: FastAPI) -> AsyncIterator[None]:
    """Import transformers & co. in the background once the server is up, so the first run page
    or chat does not wait for them while the server itself starts at once."""
    from sftkit.console import heavy

    threading.Thread(target=heavy.ensure, name="sftkit-console-warm-up", daemon=True).start()
    yield


def create_app(runs: str | Path = "runs", base: str | Path | None = None, token: str | None = None,
               host: str = "127.0.0.1", warm_up: bool = False) -> FastAPI:
    """The console for the runs folder ``runs`` (relative paths are read from ``base``, default cwd).

    ``token`` None: no token (only sensible on loopback; ``sft console`` generates one otherwise).
    ``warm_up``: import the heavy modules in the background at startup (``sft console`` does; an
    embedding program that imports transformers itself meanwhile should not, see ``heavy``)."""
    from sftkit.console.api import router

    state = ConsoleState(Workspace.create(runs, base), token or None, host)
    app = FastAPI(title="sftkit console", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_warm_up if warm_up else None)
    app.state.console = state
    _install_errors(app)
    app.include_router(router)
    page = static_dir() / "index.html"

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Any:
        given = parse_qs(request.url.query).get("token", [""])[0]
        if given and state.token and hmac.compare_digest(given.encode(), state.token.encode()):
            # The token moves into an HttpOnly cookie and out of the address bar (and history).
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, state.token, httponly=True, samesite="strict")
            return resp
        return FileResponse(page, media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.add_middleware(_Guard, state=state)
    return app
