"""Row layouts -> ``Conversation``.

Canonical keys (what ``columns=`` maps to; LLaMA-Factory's ``dataset_info.json``
naming): ``columns={canonical: file_column}``, e.g.
``{"prompt": "question_text", "response": "reply"}``. The reverse direction
(``{file_column: canonical}``) is accepted too when unambiguous.

=============  ====================================  ===========================
canonical      default file columns                  used by layouts
=============  ====================================  ===========================
``messages``   ``messages`` / ``conversations``      messages, sharegpt
``prompt``     ``instruction``                       alpaca
``query``      ``input``                             alpaca
``response``   ``output``, ``response``              alpaca
``history``    ``history``                           alpaca ([[user, assistant], ...])
``system``     ``system``                            alpaca, cot, sharegpt, messages
``tools``      ``tools``                             sharegpt, messages (JSON string or list)
``question``   ``question``                          cot
``thinking``   ``thinking``, ``reasoning``           cot
``answer``     ``answer``                            cot
``text``       ``text``                              text
``candidates`` ``category``, ``candidates``            classify (a list, or a JSON list in a string)
``label``      ``label``                             any (``Conversation.label``)
``role_tag``   ``from`` / ``role``                   key of a turn's role
``content_tag``  ``value`` / ``content``             key of a turn's text
=============  ====================================  ===========================

Every mapping function raises ``RowError(reason)``; the loader turns it into a
``Reject``.
"""

from __future__ import annotations

import json
from typing import Any

from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import DataError
from sftkit.core.vocab import CANONICAL

DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt": ("instruction",),
    "query": ("input",),
    "response": ("output", "response"),
    "history": ("history",),
    "system": ("system",),
    "tools": ("tools",),
    "question": ("question",),
    "thinking": ("thinking", "reasoning"),
    "answer": ("answer",),
    "text": ("text",),
    "candidates": ("category", "candidates"),
    "label": ("label",),
}
# A row's layout is decided by which of these (canonical) keys it has, in this order.
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("messages", ("messages",)),
    ("cot", ("question", "answer")),
    ("classify", ("candidates",)),
    ("alpaca", ("prompt", "response", "query", "history")),
    ("text", ("text",)),
)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


class RowError(ValueError):
    """This row cannot be used; the message is the reject reason."""


class ColumnMap:
    """Maps a raw row to canonical keys (see module docstring)."""

    def __init__(self, columns: dict[str, str] | None = None) -> None:
        self.explicit: dict[str, str] = {}
        for k, v in (columns or {}).items():
            if k in CANONICAL:
                self.explicit[k] = v
            elif v in CANONICAL:
                self.explicit[v] = k
            else:
                raise DataError(
                    f"columns: neither {k!r} nor {v!r} is a canonical key; use {{canonical: file_column}} "
                    f"with canonical in {', '.join(CANONICAL)}"
                )

    def canon(self, row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """``(canonical row, turn-list source key)``; the source key tells
        ``messages`` (OpenAI) from ``conversations`` (ShareGPT)."""
        out: dict[str, Any] = {}
        for key, defaults in DEFAULT_COLUMNS.items():
            names = (self.explicit[key],) if key in self.explicit else defaults
            for name in names:
                if name in row:
                    out[key] = row[name]
                    break
        src = None
        names = (self.explicit["messages"],) if "messages" in self.explicit else ("messages", "conversations")
        for name in names:
            if name in row:
                out["messages"], src = row[name], name
                break
        return out, src


def detect_layout(row: dict[str, Any], src: str | None) -> str | None:
    for layout, keys in _MARKERS:
        if any(k in row for k in keys):
            if layout == "messages":
                return "sharegpt" if src == "conversations" or _looks_sharegpt(row["messages"]) else "messages"
            return layout
    return None


def _looks_sharegpt(turns: Any) -> bool:
    return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and "from" in turns[0]


# --- field helpers -------------------------------------------------------------


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def req_str(row: dict[str, Any], key: str, shown: str | None = None) -> str:
    """A required, non-empty string field."""
    name = shown or key
    if key not in row:
        raise RowError(f"missing field '{name}'")
    v = row[key]
    if v is None:
        raise RowError(f"field '{name}' is null")
    if not isinstance(v, str):
        raise RowError(f"field '{name}' must be a string, got {_type(v)}")
    if not v.strip():
        raise RowError(f"field '{name}' is empty")
    return v


def opt_str(row: dict[str, Any], key: str, shown: str | None = None) -> str:
    """An optional string field ('' when absent or null)."""
    v = row.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise RowError(f"field '{shown or key}' must be a string, got {_type(v)}")
    return v


def parse_tools(v: Any) -> list[dict[str, Any]] | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            raise RowError("field 'tools' is not valid JSON") from None
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        raise RowError(f"field 'tools' must be a list of objects, got {_type(v)}")
    return v or None


def _content(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    if isinstance(v, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in v):
        return "".join(p["text"] for p in v)  # OpenAI content parts (text only)
    raise RowError(f"{where}: content must be a string, got {_type(v)}")


def _parse_call(c: Any, where: str) -> dict[str, Any]:
    if isinstance(c, dict) and isinstance(c.get("function"), dict):
        c = c["function"]
    if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
        raise RowError(f"{where}: a tool call needs a 'name'")
    args = c.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            raise RowError(f"{where}: tool call arguments are not valid JSON") from None
    return {"name": c["name"], "arguments": args}


def parse_tool_calls(v: Any, where: str) -> list[dict[str, Any]] | None:
    if v is None or v == []:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            raise RowError(f"{where}: function call is not valid JSON") from None
    calls = v if isinstance(v, list) else [v]
    return [_parse_call(c, where) for c in calls]


# --- layouts -------------------------------------------------------------------


def _turns(row: dict[str, Any], shown: str) -> list[Any]:
    turns = row.get("messages")
    if turns is None:
        raise RowError(f"missing field '{shown}'")
    if not isinstance(turns, list):
        raise RowError(f"field '{shown}' must be a list of turns, got {_type(turns)}")
    if not turns:
        raise RowError(f"field '{shown}' is empty")
    return turns


def _message(t: Any, i: int, role_tag: str, content_tag: str, sharegpt: bool) -> Message:
    where = f"message {i + 1}"
    if not isinstance(t, dict):
        raise RowError(f"{where}: must be an object, got {_type(t)}")
    role = t.get(role_tag, t.get("role" if sharegpt else "from"))
    if not isinstance(role, str):
        raise RowError(f"{where}: missing role ('{role_tag}')")
    raw_content = t.get(content_tag, t.get("content" if sharegpt else "value"))
    mapped = SHAREGPT_ROLES.get(role)  # both vocabularies are accepted in both layouts
    if mapped is None:
        raise RowError(f"{where}: unknown role {role!r}")
    if role == "function_call":
        return Message("assistant", "", tool_calls=parse_tool_calls(raw_content, where))
    content = _content(raw_content, where)
    reasoning = t.get("reasoning", t.get("reasoning_content", t.get("thinking")))
    if reasoning is not None and not isinstance(reasoning, str):
        raise RowError(f"{where}: reasoning must be a string, got {_type(reasoning)}")
    calls = parse_tool_calls(t.get("tool_calls"), where) if mapped == "assistant" else None
    name = t.get("name") if isinstance(t.get("name"), str) else None
    return Message(mapped, content, reasoning=reasoning or None, tool_calls=calls, name=name)


def from_turns(row: dict[str, Any], layout: str, cmap: ColumnMap, shown: str) -> Conversation:
    sharegpt = layout == "sharegpt"
    role_tag = cmap.explicit.get("role_tag", "from" if sharegpt else "role")
    content_tag = cmap.explicit.get("content_tag", "value" if sharegpt else "content")
    msgs = [_message(t, i, role_tag, content_tag, sharegpt) for i, t in enumerate(_turns(row, shown))]
    system = opt_str(row, "system")
    if system.strip() and not (msgs and msgs[0].role == "system"):
        msgs.insert(0, Message("system", system))
    return Conversation(msgs, tools=parse_tools(row.get("tools")))


def _history(v: Any) -> list[Message]:
    bad = RowError("field 'history' must be a list of [user, assistant] string pairs")
    if isinstance(v, str):  # CSV/TSV cells are strings: an empty cell, or the list as JSON
        if not v.strip():
            return []
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            raise bad from None
    if v is None or v == []:
        return []
    if not isinstance(v, list):
        raise bad
    out: list[Message] = []
    for pair in v:
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise bad
        out += [Message("user", pair[0]), Message("assistant", pair[1])]
    return out


def from_alpaca(row: dict[str, Any], cmap: ColumnMap) -> Conversation:
    names = _shown_names(row, cmap)
    prompt = opt_str(row, "prompt", names["prompt"])
    query = opt_str(row, "query", names["query"])
    if not prompt.strip() and not query.strip():
        missing = "prompt" not in row and "query" not in row
        raise RowError(f"{'missing' if missing else 'empty'} field '{names['prompt']}' (and '{names['query']}')")
    user = f"{prompt}\n\n{query}" if prompt.strip() and query.strip() else (prompt if prompt.strip() else query)
    reply = req_str(row, "response", names["response"])
    msgs = _history(row.get("history"))
    system = opt_str(row, "system")
    if system.strip():
        msgs.insert(0, Message("system", system))
    msgs += [Message("user", user), Message("assistant", reply)]
    return Conversation(msgs, tools=parse_tools(row.get("tools")))


def _shown_names(row: dict[str, Any], cmap: ColumnMap) -> dict[str, str]:
    """Field names as the user's file spells them (for reject reasons)."""
    out = {}
    for key in ("prompt", "query", "response"):
        out[key] = cmap.explicit.get(key, DEFAULT_COLUMNS[key][0])
    return out


def from_cot(row: dict[str, Any], cmap: ColumnMap) -> Conversation:
    question = req_str(row, "question", cmap.explicit.get("question"))
    answer = req_str(row, "answer", cmap.explicit.get("answer"))
    thinking = opt_str(row, "thinking", cmap.explicit.get("thinking"))
    msgs = []
    system = opt_str(row, "system")
    if system.strip():
        msgs.append(Message("system", system))
    msgs += [Message("user", question), Message("assistant", answer, reasoning=thinking or None)]
    return Conversation(msgs)


# The instruction of the fudan-news classification layout (text, category, output),
# so the real zh_cls_fudan-news files drop in unchanged.
CLASSIFY_SYSTEM = "你是一个文本分类领域的专家，你会接收到一段文本和几个潜在的分类选项，请输出文本内容的正确类型"


def _candidates(v: Any) -> list[str]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            v = [x.strip() for x in v.replace("，", ",").split(",") if x.strip()]
    if not (isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v)):
        raise RowError("field 'category' must be a non-empty list of label strings (or a JSON list in a string)")
    return v


def from_classify(row: dict[str, Any], cmap: ColumnMap) -> Conversation:
    text = req_str(row, "text", cmap.explicit.get("text"))
    labels = _candidates(row.get("candidates"))
    answer = req_str(row, "response", _shown_names(row, cmap)["response"])
    user = f"文本:{text},类型选型:{json.dumps(labels, ensure_ascii=False)}"
    msgs = [Message("system", CLASSIFY_SYSTEM), Message("user", user), Message("assistant", answer)]
    return Conversation(msgs, label=answer.strip())


def from_text(row: dict[str, Any], cmap: ColumnMap) -> Conversation:
    return Conversation(text=req_str(row, "text", cmap.explicit.get("text")))


def to_conversation(row: dict[str, Any], layout: str, cmap: ColumnMap, turns_key: str | None) -> Conversation:
    if layout in ("messages", "sharegpt"):
        default = "conversations" if layout == "sharegpt" else "messages"
        conv = from_turns(row, layout, cmap, turns_key or cmap.explicit.get("messages", default))
    elif layout == "alpaca":
        conv = from_alpaca(row, cmap)
    elif layout == "cot":
        conv = from_cot(row, cmap)
    elif layout == "classify":
        conv = from_classify(row, cmap)
    else:
        conv = from_text(row, cmap)
    label = row.get("label")
    if label is not None:
        conv.label = label if isinstance(label, str) else json.dumps(label)
    return conv
