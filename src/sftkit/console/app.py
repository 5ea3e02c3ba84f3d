"""The console's FastAPI app: the page, its API, and the guards in front of both.

Guards (pure ASGI, before any route runs, so a refused request starts nothing):

* Host header, parsed strictly (``name[:port]``, one header) and compared exactly: the
  console answers only to ``127.0.0.1``, ``localhost``, ``[::1]`` or the ``--host`` it was
  given, on the port the connection arrived on (400 when malformed, 403 otherwise). A web
  page under another name (``127.attacker.example``) cannot reach it through DNS rebinding.
  Bound to all interfaces (``0.0.0.0``/``::``) the machine's names are unknown: any
  well-formed Host is served, and the token -- which such a console always has -- is the guard;
* Origin: a request that carries one (browsers do on every POST, and on cross-origin
  fetches) must come from the console's own origin, ``http://`` + the Host it was sent to;
  ``null`` and other origins get 403. No Origin (curl, scripts) is fine: the Host check
  passed, and the token, when there is one, still applies;
* access token: when the console has one (``sft console`` always does), every ``/api/*``
  request needs ``Authorization: Bearer TOKEN`` or the cookie set by opening ``/?token=TOKEN``
  (one cookie name per port, so two consoles on one machine do not log each other out); else 401;
* bodies of state-changing requests must be ``application/json`` (a cross-site form cannot post);
* a Content-Security-Policy that allows this origin only: the page loads nothing from elsewhere.
  ``Referrer-Policy: same-origin``, not ``no-referrer``: under the latter the Fetch standard
  has the page's own POSTs carry ``Origin: null``, which the Origin check must refuse.

Errors are JSON in ``sft serve``'s shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sftkit.console import heavy
from sftkit.console.api import router
from sftkit.console.chat import ChatModels
from sftkit.console.errors import ConsoleError, error_body
from sftkit.console.jobs import Jobs
from sftkit.console.workspace import Workspace
from sftkit.core.errors import UsageError

COOKIE = "sftkit_console_token"  # + "_<port>"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # as a browser writes them in Host
WILDCARDS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# A Host header: a DNS name or IPv4 address, or an IPv6 address in brackets; an optional port.
_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?\.?)(?::(?P<port>[0-9]{1,5}))?")
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
    """Whether the listening address ``host`` (what ``--host`` was given) is a loopback interface.
    For the address the server binds, never for a Host header (see ``host_names``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_names(host: str) -> tuple[str, ...] | None:
    """The Host names a console listening on ``host`` answers to; None: any (all interfaces)."""
    name = host.strip().lower()
    if name.strip("[]") in WILDCARDS:
        return None
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, name)))


class HostPort(NamedTuple):
    name: str  # lower case; IPv6 in brackets
    port: int  # the default port of the scheme when the header names none


def parse_host(value: str, default_port: int = 80) -> HostPort | None:
    """``Host``/authority text -> (name, port), or None when it is not exactly that."""
    m = _HOST.fullmatch(value.lower())
    if m is None:
        return None
    port = int(m["port"]) if m["port"] else default_port
    return HostPort(m["name"], port) if 0 < port < 65536 else None


def cookie_name(scope: Scope) -> str:
    server = scope.get("server")
    return f"{COOKIE}_{server[1]}" if server and server[1] else COOKIE


def _json(status: int, message: str, code: str, type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, type_, code=code), status_code=status)


class _Guard:
    """Host, Origin, token and content-type checks, and security headers on every response."""

    def __init__(self, app: ASGIApp, state: ConsoleState) -> None:
        self.app, self.state = app, state
        self.names = host_names(state.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the console has none; refused before any route sees it
            await send({"type": "websocket.close", "code": 1008})
            return
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
                            (b"referrer-policy", b"same-origin"), (b"cache-control", b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refuse(self, scope: Scope) -> JSONResponse | None:
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers") or []]
        headers = dict(raw)
        hosts = [v for k, v in raw if k == "host"]
        host, refusal = self._host(hosts, scope)
        if refusal is None:
            refusal = self._origin(raw, host, scope)
        if refusal is not None or not scope["path"].startswith("/api"):
            return refusal
        if self.state.token is not None and not self._authorised(headers, scope):
            return _json(401, "missing or wrong access token: open the URL `sft console` printed "
                         "(…/?token=…) or send 'Authorization: Bearer <token>'", "invalid_token",
                         "authentication_error")
        if scope["method"] not in SAFE_METHODS and not headers.get("content-type", "").startswith("application/json"):
            return _json(415, "POST bodies must be JSON (Content-Type: application/json)", "unsupported_media_type")
        return None

    def _host(self, hosts: list[str], scope: Scope) -> tuple[HostPort | None, JSONResponse | None]:
        """The request's Host, or the refusal: malformed (400), or not this console (403)."""
        server = scope.get("server")
        port = server[1] if server and server[1] else None
        default = 443 if scope.get("scheme") == "https" else 80
        parsed = parse_host(hosts[0].strip(), default) if len(hosts) == 1 else None
        if parsed is None:
            return None, _json(400, f"the Host header must be one 'name:port' (got {hosts!r})", "bad_host")
        if self.names is None or (parsed.name in self.names and (port is None or parsed.port == port)):
            return parsed, None
        where = port or "PORT"
        return None, _json(403, f"Host {hosts[0]!r} is not served: this console answers only to "
                           f"{', '.join(self.names)} on port {where} (a page under another name could otherwise "
                           f"reach it through DNS rebinding). Open the address `sft console` printed; an SSH "
                           f"tunnel must keep the port number (ssh -L {where}:127.0.0.1:{where} ...)",
                           "host_not_allowed")

    def _origin(self, raw: list[tuple[str, str]], host: HostPort | None, scope: Scope) -> JSONResponse | None:
        """A request from a browser page must come from this console's own page."""
        origins = [v for k, v in raw if k == "origin"]
        if not origins or host is None:
            return None
        scheme = scope.get("scheme", "http")
        given, sep, rest = origins[0].strip().lower().partition("://")
        parsed = parse_host(rest, 443 if given == "https" else 80) if sep else None
        if len(origins) == 1 and given == scheme and parsed == host:
            return None
        return _json(403, f"Origin {origins[0]!r} is not this console ({scheme}://{host.name}:{host.port}): "
                     "a page from another site cannot use the console", "cross_origin")

    def _authorised(self, headers: dict[str, str], scope: Scope) -> bool:
        token = (self.state.token or "").encode()
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return True
        name = cookie_name(scope)
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name and hmac.compare_digest(v.encode(), token):
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

    threading.Thread(target=heavy.ensure, name="sftkit-console-warm-up", daemon=True).start()
    yield


def create_app(runs: str | Path = "runs", base: str | Path | None = None, token: str | None = None,
               host: str = "127.0.0.1", warm_up: bool = False, allow: tuple[str | Path, ...] = (),
               device: str = "auto") -> FastAPI:
    """The console for the runs folder ``runs`` (relative paths are read from ``base``, default cwd).

    ``host``: the address the server listens on (the Host header must name it, or loopback).
    ``token`` None: no token, allowed on a loopback ``host`` only (ValueError otherwise): the
    Host and Origin checks then guard the API, but any local user can use it; ``sft console``
    always has one. ``allow``: further folders the page may read besides ``base`` and ``runs``.
    ``warm_up``: import the heavy modules in the background at startup (``sft console`` does; an
    embedding program that imports transformers itself meanwhile should not, see ``heavy``).
    ``device``: where the chat page's models run (``sftkit.hub.device``)."""

    if not token and not is_loopback(host):
        raise UsageError(f"a console listening on {host!r} (not loopback) needs an access token")
    state = ConsoleState(Workspace.create(runs, base, allow), token or None, host, chat=ChatModels(device))
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
            resp.set_cookie(cookie_name(request.scope), state.token, httponly=True, samesite="strict")
            return resp
        return FileResponse(page, media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.add_middleware(_Guard, state=state)
    return app
