"""OpenAI's wire protocol as ``sft serve`` speaks it: the request bodies, their strict parsing,
errors in OpenAI's shape, and a chat request -> ``Conversation``.

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` (``APIError``
carries the HTTP status with them). Bodies are validated strictly (``true`` is not a number,
``"yes"`` is not a boolean), down to every tool call, content part and tool, and a bad field is
named in ``param`` (``messages[1].tool_calls[0].function``); NaN/Infinity and text that is not
valid Unicode are refused where the JSON is parsed. Pure Python and pydantic: no web framework here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sftkit.core.conversation import Conversation, Message

# -- errors -------------------------------------------------------------------


class APIError(Exception):
    """An error reported to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_message(errs: Sequence[Any]) -> tuple[str, str | None]:
    """FastAPI's validation errors (``RequestValidationError.errors()``) -> (message, param)."""
    if not errs:
        return "invalid request body", None
    first = errs[0]
    if first.get("type") == "json_invalid":
        return "could not parse the JSON body of the request", None
    param = _param([x for x in first.get("loc", ()) if x != "body"]) or None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


# -- request bodies ---------------------------------------------------------------


class _Body(BaseModel):
    # OpenAI clients send many optional fields; unknown ones are ignored, known ones validated
    # strictly: a hostile or buggy client gets a 400, not a guess (true as 1, "yes" as True).
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Body):
    type: str  # any string here: a non-text part gets its own message ("only text ... supported")
    text: str | None = None


class ToolCallFunction(_Body):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends a JSON string; an object is accepted too


class ToolCall(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class FunctionDef(_Body):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema: shown to the model as it is
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # torch generators take 64-bit seeds
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    user: str | None = None  # OpenAI's end-user id: the canary routing key (sftkit.infer.canary)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return v


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None


# -- parsing ------------------------------------------------------------------------

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_OBJECT_ERRORS = {"model_type", "model_attributes_type", "dict_type"}
M = TypeVar("M", bound=BaseModel)


def _param(path: list[Any]) -> str:
    """``["messages", 0, "tool_calls"]`` -> ``messages[0].tool_calls`` (OpenAI's way of naming a field)."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _find_surrogate(data: Any) -> tuple[list[Any], int] | None:
    """Where a lone surrogate (valid JSON as ``\\ud800``, not text: tokenizers and encoders
    reject it) sits in parsed JSON: (path, character). Iterative, with parent links, so depth
    and width cost nothing extra."""
    stack: list[tuple[Any, Any]] = [(data, None)]
    while stack:
        value, link = stack.pop()
        if isinstance(value, dict):
            stack += [(k, (k, link)) for k in value] + [(v, (k, link)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, (i, link)) for i, v in enumerate(value)]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                path = []
                while link is not None:
                    key, link = link
                    path.append(key)
                return path[::-1], e.start
    return None


def loads(text: str, param: str | None = None) -> Any:
    """JSON text from a client -> data: NaN/Infinity and invalid Unicode refused (400)."""
    what = f"{param}: the JSON" if param else "the JSON body of the request"
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise APIError(400, f"{what} is nested too deeply", param=param) from None
    except ValueError as e:
        raise APIError(400, f"could not parse {what} ({e})" if not param else f"{what} is not valid ({e})",
                       param=param) from None
    hit = _find_surrogate(data) if _SURROGATE_ESCAPE.search(text) else None
    if hit is not None:
        at = _param([*([param] if param else []), *hit[0]]) or None
        raise APIError(400, f"{at or 'body'}: invalid Unicode (a lone surrogate escape at character {hit[1]})",
                       param=at)
    return data


def _real_path(loc: tuple[Any, ...], data: Any, missing: bool) -> list[Any]:
    """Pydantic's error location minus the names of union members (``content.str``): only
    the steps that exist in the body, plus the name of a missing field."""
    path, node = [], data
    for i, step in enumerate(loc):
        if (isinstance(node, dict) and step in node) or (
                isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)):
            path.append(step)
            node = node[step]
        elif missing and i == len(loc) - 1 and isinstance(node, dict):
            path.append(step)
    return path


def _invalid(exc: ValidationError, data: Any) -> APIError:
    """The most specific problem; a union's alternatives at that place are listed together."""
    found = [(_real_path(e["loc"], data, e["type"] == "missing"),
              "Input should be a JSON object" if e["type"] in _OBJECT_ERRORS else e["msg"]) for e in exc.errors()]
    deepest = max(len(p) for p, _ in found)
    path = next(p for p, _ in found if len(p) == deepest)
    why = "; ".join(dict.fromkeys(m for p, m in found if p == path))
    param = _param(path) or None
    return APIError(400, f"{param}: {why}" if param else why, param=param)


def parse_body(model: type[M], raw: bytes) -> M:
    """A request body -> ``model``; every way it can be wrong is a 400 naming the field."""
    try:
        text = raw.decode("utf-8")  # JSON on the wire is UTF-8 (RFC 8259)
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    data = loads(text)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _invalid(e, data) from None


# -- conversion ---------------------------------------------------------------------


def _text_content(m: ChatMessage, i: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    parts = []
    for j, part in enumerate(m.content):
        if part.type != "text" or part.text is None:
            where = f"messages[{i}].content[{j}]"
            raise APIError(400, f"{where}: only text content parts are supported (got {part.type!r})", param=where)
        parts.append(part.text)
    return "".join(parts)


def _tool_call(call: ToolCall, where: str) -> dict[str, Any]:
    """A call as the data readers produce it: ``{"name", "arguments": {...}}``, so the prompt is
    rendered the way training rows were."""
    args = call.function.arguments
    where += ".function.arguments"
    if isinstance(args, str):
        args = loads(args, where) if args.strip() else {}
    if not isinstance(args, dict):
        raise APIError(400, f"{where}: must be a JSON object (or a string holding one)", param=where)
    return {"name": call.function.name, "arguments": args}


def to_conversation(req: ChatRequest) -> Conversation:
    msgs = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role  # OpenAI's newer name for the system role
        calls = [_tool_call(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls or [])]
        msgs.append(Message(role=role, content=_text_content(m, i), reasoning=m.reasoning_content,
                            tool_calls=calls or None, name=m.name))
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    return Conversation(messages=msgs, tools=tools or None)
