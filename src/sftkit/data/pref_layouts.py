"""Preference rows -> ``PreferencePair`` / ``Feedback``: the layouts people have, one row at a time.

Layouts (``format``; ``preference.py`` detects it per file when left out):

====================  =========================================================================
``sharegpt_pairs``    ``conversations``/``messages`` (the prompt turns) + ``chosen`` + ``rejected``
                      (LLaMA-Factory ranking data: each reply one ``{from, value}`` object)
``alpaca_pairs``      ``instruction``/``input`` (+ ``system``, ``history``) + ``chosen`` + ``rejected``
``prompt_pairs``      TRL: ``prompt`` (a string or a message list) + ``chosen`` + ``rejected``
``implicit_pairs``    TRL implicit prompt: ``chosen``/``rejected`` are whole conversations; the
                      prompt is their common leading turns
``messages_feedback`` ``messages``/``conversations`` ending on the judged assistant turn + ``label``
``prompt_feedback``   TRL unpaired: ``prompt`` + ``completion`` + ``label``
``alpaca_feedback``   ``instruction``/``input`` + ``output`` + ``label``
====================  =========================================================================

A reply (``chosen``, ``rejected``, ``completion``) may be a string, one message object, or a
list holding one assistant message. ``label`` is a boolean (``true``/``false``/``1``/``0`` as
text too, since CSV cells are strings). Turn lists and Alpaca fields go through the SFT layout
code (``layouts.py``), so a prompt means exactly what it means in an SFT row, and the prompt
plus a reply passes the same conversation checks (``validate.py``). Every mapping function
raises ``RowError(reason)``; the loader turns it into a ``Reject``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import DataError
from sftkit.core.vocab import PAIR_LAYOUTS, PREF_KEYS
from sftkit.data.layouts import ColumnMap, RowError, from_alpaca, from_turns, opt_str, parse_tools
from sftkit.data.validate import check_conversation

_TURNS = ("conversations", "messages")
_ALPACA = ("instruction", "input")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(slots=True)
class PreferencePair:
    """A prompt (ending where the model starts writing) and two replies, the first preferred."""

    prompt: Conversation
    chosen: Message
    rejected: Message
    source: str | None = None


@dataclass(slots=True)
class Feedback:
    """A prompt and one reply judged good (``desirable``) or bad: KTO's unpaired rows."""

    prompt: Conversation
    completion: Message
    desirable: bool
    source: str | None = None


PrefRow = PreferencePair | Feedback


# --- layout detection -----------------------------------------------------------------


def detect_pref_layout(row: dict[str, Any]) -> str | None:
    """The layout a (renamed) row is in; a row with only one of chosen/rejected, or a label
    but no reply, still gets a layout, so its reject names the missing field."""
    turns, alpaca = any(k in row for k in _TURNS), any(k in row for k in _ALPACA)
    if "chosen" in row or "rejected" in row:
        prompt = "prompt" in row
        return _first(
            ("sharegpt_pairs", turns), ("prompt_pairs", prompt), ("alpaca_pairs", alpaca), ("implicit_pairs", True)
        )
    if "label" in row or "completion" in row:
        prompt = "completion" in row or "prompt" in row
        return _first(
            ("prompt_feedback", prompt), ("messages_feedback", turns), ("alpaca_feedback", alpaca or "output" in row)
        )
    return None


def _first(*options: tuple[str, bool]) -> str | None:
    return next((name for name, hit in options if hit), None)


def rename(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    if not columns:
        return row
    out = {k: v for k, v in row.items() if k not in columns.values()}
    out.update({key: row[col] for key, col in columns.items() if col in row})
    return out


def check_columns(columns: dict[str, str] | None) -> dict[str, str]:
    for key in columns or {}:
        if key not in PREF_KEYS:
            raise DataError(
                f"columns: {key!r} is not a preference key; use {{key: file_column}} with key in {', '.join(PREF_KEYS)}"
            )
    return dict(columns or {})


# --- field mapping --------------------------------------------------------------------


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _turns_conv(value: Any, name: str, row: dict[str, Any]) -> Conversation:
    """A turn list (either vocabulary) through the SFT mapping, plus the row's system/tools."""
    layout = "sharegpt" if name == "conversations" else "messages"
    canon = {"messages": value, "system": row.get("system"), "tools": row.get("tools")}
    return from_turns(canon, layout, ColumnMap(), name)


def reply(value: Any, name: str) -> Message:
    """A reply field: a string, one message object, or a one-message list; always an assistant turn."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RowError(f"field '{name}' must hold one assistant message, got {len(value)}")
        value = value[0]
    if value is None:
        raise RowError(f"missing field '{name}'")
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"field '{name}' is empty")
        return Message("assistant", value)
    if not isinstance(value, dict):
        raise RowError(f"field '{name}' must be a string or a message object, got {_type(value)}")
    try:
        msg = _turns_conv([value], "conversations" if "from" in value else "messages", {}).messages[0]
    except RowError as e:
        raise RowError(f"field '{name}': {str(e).removeprefix('message 1: ')}") from None
    if msg.role != "assistant":
        raise RowError(f"field '{name}' must be an assistant message, got role {msg.role!r}")
    if not (msg.content.strip() or msg.tool_calls):
        raise RowError(f"field '{name}' is empty")
    return msg


def _need(row: dict[str, Any], key: str) -> Any:
    if row.get(key) is None:
        raise RowError(f"missing field '{key}'")
    return row[key]


def _prompt_field(row: dict[str, Any]) -> Conversation:
    """TRL's ``prompt``: a plain string is one user turn; a list is the prompt's turns."""
    value = _need(row, "prompt")
    if isinstance(value, str):
        if not value.strip():
            raise RowError("field 'prompt' is empty")
        system = opt_str(row, "system")
        msgs = [Message("system", system)] if system.strip() else []
        return Conversation([*msgs, Message("user", value)], tools=parse_tools(row.get("tools")))
    if not isinstance(value, list):
        raise RowError(f"field 'prompt' must be a string or a list of messages, got {_type(value)}")
    return _turns_conv(value, "messages", row)


def _alpaca_prompt(row: dict[str, Any]) -> Conversation:
    """Alpaca fields through the SFT mapping (same instruction/input join and history rules);
    the mapping wants a reply, so it gets a stand-in that is dropped again."""
    canon = {
        "prompt": row.get("instruction"),
        "query": row.get("input"),
        "response": "-",
        "history": row.get("history"),
        "system": row.get("system"),
        "tools": row.get("tools"),
    }
    conv = from_alpaca(canon, ColumnMap())
    conv.messages.pop()
    return conv


def _implicit(row: dict[str, Any]) -> tuple[Conversation, Message, Message]:
    """TRL's implicit prompt: the common leading turns of two whole conversations."""
    sides = []
    for name in ("chosen", "rejected"):
        value = _need(row, name)
        if not isinstance(value, list) or len(value) < 2:
            raise RowError(
                f"field '{name}' must be a whole conversation (a message list) when there is no "
                "'prompt' field; add 'prompt' or use the conversations + chosen + rejected layout"
            )
        try:
            sides.append(_turns_conv(value, name, {}).messages)
        except RowError as e:
            raise RowError(f"field '{name}': {e}") from None
    c, r = sides
    n = 0
    while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
    for name, rest in (("chosen", c[n:]), ("rejected", r[n:])):
        if len(rest) != 1:
            raise RowError(
                f"field '{name}' continues for {len(rest)} turns after the shared prompt; "
                "each side must add exactly one assistant reply"
            )
    return Conversation(c[:n]), reply(c[n].to_dict(), "chosen"), reply(r[n].to_dict(), "rejected")


def _pair_parts(row: dict[str, Any], layout: str) -> tuple[Conversation, Message, Message]:
    if layout == "implicit_pairs":
        return _implicit(row)
    if layout == "sharegpt_pairs":
        key = next(k for k in _TURNS if k in row)
        prompt = _turns_conv(row[key], key, row)
    else:
        prompt = _prompt_field(row) if layout == "prompt_pairs" else _alpaca_prompt(row)
    return prompt, reply(row.get("chosen"), "chosen"), reply(row.get("rejected"), "rejected")


def _label(row: dict[str, Any]) -> bool:
    v = _need(row, "label")
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise RowError(f"field 'label' must be true or false, got {json.dumps(v, ensure_ascii=False)[:40]}")


def _feedback_parts(row: dict[str, Any], layout: str) -> tuple[Conversation, Message]:
    if layout == "prompt_feedback":
        return _prompt_field(row), reply(row.get("completion"), "completion")
    if layout == "alpaca_feedback":
        return _alpaca_prompt(row), reply(row.get("output"), "output")
    key = next(k for k in _TURNS if k in row)
    conv = _turns_conv(row[key], key, row)
    if not conv.messages or conv.messages[-1].role != "assistant":
        raise RowError(f"field '{key}' must end on the assistant turn the label judges")
    last = conv.messages.pop()
    return conv, reply(last.to_dict(), f"{key}[-1]")


# --- checks ---------------------------------------------------------------------------


def _check_prompt(prompt: Conversation, first: Message) -> None:
    """The SFT conversation checks on prompt + one reply: order of turns, empty turns, the
    prompt ending where a reply can follow (on a user or tool turn)."""
    if not prompt.messages:
        raise RowError("the prompt is empty")
    if prompt.messages[-1].role == "assistant":
        raise RowError("the prompt ends on an assistant turn; it must end on the turn the replies answer")
    full = check_conversation(Conversation([*prompt.messages, first], tools=prompt.tools))
    prompt.messages = full.messages[:-1]  # (empty system turns dropped, as for SFT rows)


def _same(a: Message, b: Message) -> bool:
    return (a.content.strip(), (a.reasoning or "").strip(), a.tool_calls) == (
        b.content.strip(), (b.reasoning or "").strip(), b.tool_calls)  # fmt: skip


def to_pref_row(row: dict[str, Any], layout: str, source: str) -> PrefRow:
    """One renamed row in a known layout -> its pair or feedback (``RowError`` when unusable)."""
    if layout in PAIR_LAYOUTS:
        prompt, chosen, rejected = _pair_parts(row, layout)
        _check_prompt(prompt, chosen)
        if _same(chosen, rejected):
            raise RowError("chosen equals rejected: there is nothing to prefer; fix or drop the row")
        prompt.source = source
        return PreferencePair(prompt, chosen, rejected, source)
    prompt, completion = _feedback_parts(row, layout)
    desirable = _label(row)
    _check_prompt(prompt, completion)
    prompt.source = source
    return Feedback(prompt, completion, desirable, source)
