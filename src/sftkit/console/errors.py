"""One error type for the console API; the app turns it into a JSON body with a status code.

The body has the same shape as ``sft serve``'s: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``sft serve``'s error shape (not imported from there: that module loads torch, and the
    console should answer its first request without waiting for it)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ConsoleError(Exception):
    """A request the console refuses; ``status`` is the HTTP status (4xx for the caller's mistakes)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def bad_request(message: str, param: str | None = None) -> ConsoleError:
    return ConsoleError(400, message, param=param, code="bad_request")


def not_found(message: str, param: str | None = None) -> ConsoleError:
    return ConsoleError(404, message, param=param, code="not_found")


def conflict(message: str, param: str | None = None) -> ConsoleError:
    return ConsoleError(409, message, param=param, code="conflict")
