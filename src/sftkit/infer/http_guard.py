"""What stands between the network and ``sft serve``'s routes: the API key and the body size.

Both are pure ASGI middleware (not BaseHTTPMiddleware), so streaming responses and
client-disconnect detection are left untouched, and both answer in OpenAI's error shape:
401 for a missing or wrong key, 413 for a body over the limit.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sftkit.infer.openai_protocol import error_body


def key_ok(authorization: bytes, key: bytes) -> bool:
    """``authorization`` is ``Bearer <key>`` (compared in constant time: no timing hints)."""
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)


class AuthMiddleware:
    """``Authorization: Bearer KEY`` on every path but ``/health`` (the API, the docs and
    the OpenAPI schema alike; routes added later are covered without a second thought).
    Pure ASGI (not BaseHTTPMiddleware) so streaming responses and client-disconnect
    detection are left untouched; it runs before the body is read, so a bad body without
    a key is still a 401."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not key_ok(auth, self.key):
                body = error_body("Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                  code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes (413) before anything parses them: by the
    Content-Length header when there is one, else by counting a streamed (chunked) body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, msg: str) -> None:
        await JSONResponse(error_body(msg, code="request_too_large" if status == 413 else None),
                           status_code=status)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body over the server's limit of {self.limit} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(scope, receive, send, 400, "invalid Content-Length header")
                return
            if int(declared) > self.limit:
                await self._refuse(scope, receive, send, 413, too_big)
                return
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send, 413, too_big)
                return
            if not msg.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:  # the body once, then the real channel (disconnect detection for streams)
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
