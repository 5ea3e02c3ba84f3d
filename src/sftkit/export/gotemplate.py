"""A strict renderer for the small subset of Go ``text/template`` that ``ollama.py`` emits.

Ollama renders a Modelfile's ``TEMPLATE`` with Go's ``text/template``. To check, without Go
or Ollama, that the template sftkit writes gives the same prompt as sftkit's own renderer,
this module renders exactly the constructs sftkit emits, with Go's semantics:

- text; actions ``{{ ... }}`` with the trim markers ``{{- `` and `` -}}`` (which remove all
  ASCII white space on that side of the neighbouring text);
- ``{{.}}``, fields ``.A.B`` and ``$.A`` (an unknown field is an error, as it is for the
  struct Ollama passes);
- ``{{if P}} ... {{else if P}} ... {{else}} ... {{end}}`` and ``{{range P}} ... {{end}}``;
- the built-ins ``eq`` (two or more arguments), ``ne``, ``not``, ``and``, ``or`` (returning an
  argument, as Go does) and ``len`` (bytes of a string, as Go counts);
- string literals: ``"..."`` (Go escapes ``\\n \\t \\r \\" \\\\ \\uXXXX``) and raw ``\\`...\\```.

Anything else -- comments, variables, pipes ``|``, parentheses, numbers, ``with``, ``define``,
``range ... else``, other functions -- raises ``GoTemplateError``: a construct sftkit starts
emitting must be added here (and cross-checked against real Go in the tests) before it is
trusted. This is not a general Go template engine.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_WS = " \t\r\n"
_FUNCS = ("eq", "ne", "not", "and", "or", "len")
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|\$\.[A-Za-z_][\w.]*|\$|\.[A-Za-z_][\w.]*|\.|[A-Za-z_]\w*|\S')
_GO_ESCAPES = re.compile(r"\\(?:[ntr\"\\]|u[0-9a-fA-F]{4})")


class GoTemplateError(ValueError):
    """The template uses a construct outside the supported subset, or fails to execute."""


@dataclass
class _Node:
    kind: str  # "text" | "out" | "if" | "range"
    text: str = ""
    args: list[str] = field(default_factory=list)
    branches: list[tuple[list[str] | None, list[_Node]]] = field(default_factory=list)  # if: (cond|None=else, body)
    body: list[_Node] = field(default_factory=list)  # range


# -- lexing: text and actions ---------------------------------------------------------


def _action_end(tpl: str, start: int) -> int:
    """Index of the ``}}`` closing the action whose body starts at ``start`` (quotes respected)."""
    i = start
    while i < len(tpl):
        c = tpl[i]
        if c in "\"`":
            close = tpl.find(c, i + 1) if c == "`" else _dq_end(tpl, i)
            if close < 0:
                raise GoTemplateError(f"unterminated string literal at offset {i}")
            i = close + 1
        elif tpl.startswith("}}", i):
            return i
        else:
            i += 1
    raise GoTemplateError(f"unclosed action starting at offset {start - 2}")


def _dq_end(tpl: str, i: int) -> int:
    j = i + 1
    while j < len(tpl) and tpl[j] != '"':
        j += 2 if tpl[j] == "\\" else 1
    return j if j < len(tpl) else -1


def _lex(tpl: str) -> list[tuple[str, Any]]:
    """``[("text", str) | ("act", [tokens])]`` with trim markers already applied to the text."""
    out: list[list[Any]] = []
    pos = 0
    while True:
        at = tpl.find("{{", pos)
        if at < 0:
            out.append(["text", tpl[pos:]])
            break
        out.append(["text", tpl[pos:at]])
        body_start = at + 2
        trim_left = tpl.startswith("- ", body_start) or tpl[body_start : body_start + 2] in ("-\t", "-\n", "-\r")
        end = _action_end(tpl, body_start)
        body = tpl[body_start + (2 if trim_left else 0) : end]
        trim_right = len(body) >= 2 and body[-1] == "-" and body[-2] in _WS
        if trim_right:
            body = body[:-2]
        if trim_left:
            out[-1][1] = out[-1][1].rstrip(_WS)
        out.append(["act", _words(body), trim_right])
        pos = end + 2
    for k, item in enumerate(out):
        if item[0] == "act" and item[2] and k + 1 < len(out):
            out[k + 1][1] = out[k + 1][1].lstrip(_WS)
    return [(i[0], i[1]) for i in out if i[0] == "act" or i[1]]


def _words(body: str) -> list[str]:
    s = body.strip(_WS)
    if s.startswith("/*"):
        raise GoTemplateError("comments are not in the supported subset")
    words = _TOKEN.findall(s)  # every non-space character lands in some token (the last alternative)
    for w in words:
        if len(w) == 1 and not w.isalpha() and w not in ".$":
            raise GoTemplateError(f"{w!r} in {{{{{body}}}}} is not in the supported subset (no pipes, parentheses, "
                                  "variables, numbers or unterminated strings)")
    if not words:
        raise GoTemplateError("empty action {{}}")
    return words


# -- parsing ----------------------------------------------------------------------------


def _parse(items: list[tuple[str, Any]], i: int, stops: tuple[str, ...]) -> tuple[list[_Node], int]:
    """Nodes up to (not including) the first action whose keyword is in ``stops``."""
    nodes: list[_Node] = []
    while i < len(items):
        kind, val = items[i]
        if kind == "text":
            nodes.append(_Node("text", text=val))
            i += 1
            continue
        key = val[0]
        if key in stops:
            return nodes, i
        if key == "if":
            node, i = _parse_if(items, i)
            nodes.append(node)
        elif key == "range":
            body, j = _parse(items, i + 1, ("end", "else"))
            if j >= len(items) or items[j][1][0] != "end":
                raise GoTemplateError("{{range}} needs {{end}} ({{else}} in a range is not in the subset)")
            nodes.append(_Node("range", args=_pipeline(val[1:], "range"), body=body))
            i = j + 1
        elif key in ("end", "else"):
            raise GoTemplateError(f"unexpected {{{{{key}}}}}")
        elif key in ("with", "define", "template", "block", "break", "continue"):
            raise GoTemplateError(f"{{{{{key}}}}} is not in the supported subset")
        else:
            nodes.append(_Node("out", args=_pipeline(val, "output")))
            i += 1
    if stops:
        raise GoTemplateError(f"missing {{{{{stops[0]}}}}}")
    return nodes, i


def _parse_if(items: list[tuple[str, Any]], i: int) -> tuple[_Node, int]:
    node = _Node("if")
    cond: list[str] | None = _pipeline(items[i][1][1:], "if")
    while True:
        body, i = _parse(items, i + 1, ("end", "else"))
        node.branches.append((cond, body))
        words = items[i][1]
        if words[0] == "end":
            return node, i + 1
        if cond is None:
            raise GoTemplateError("{{else}} after {{else}}")
        if len(words) == 1:
            cond = None
        elif words[1] == "if":
            cond = _pipeline(words[2:], "else if")
        else:
            raise GoTemplateError(f"{{{{else {words[1]}}}}} is not in the supported subset")


def _pipeline(words: list[str], where: str) -> list[str]:
    if not words:
        raise GoTemplateError(f"{{{{{where}}}}} without an argument")
    if words[0] not in _FUNCS and len(words) != 1:
        raise GoTemplateError(f"{' '.join(words)!r}: only {', '.join(_FUNCS)} take arguments in the subset")
    for w in words[1:] if words[0] in _FUNCS else words:
        if w[0] not in ".$\"`":
            raise GoTemplateError(f"{w!r} is not in the supported subset (only fields, . and string literals)")
    return words


# -- execution --------------------------------------------------------------------------


def _literal(w: str) -> str:
    if w[0] == "`":
        return w[1:-1]
    inner = w[1:-1]
    if "\\" in _GO_ESCAPES.sub("", inner):
        raise GoTemplateError(f"escape in {w} is not in the supported subset")
    return json.loads(w)


def _field(obj: Any, path: str, word: str) -> Any:
    for name in filter(None, path.split(".")):
        if isinstance(obj, dict) and name in obj:
            obj = obj[name]
        elif not isinstance(obj, dict) and hasattr(obj, name):
            obj = getattr(obj, name)
        else:
            raise GoTemplateError(f"{word}: can't evaluate field {name}")
    return obj


def _value(w: str, dot: Any, root: Any) -> Any:
    if w[0] in "\"`":
        return _literal(w)
    if w == ".":
        return dot
    if w == "$":
        return root
    if w.startswith("$."):
        return _field(root, w[2:], w)
    return _field(dot, w[1:], w)


def _truth(v: Any) -> bool:
    if v is None or isinstance(v, bool | int | float | str | list | tuple | dict):
        return bool(v)  # Go: false, 0, nil and empty string/slice/map are false
    raise GoTemplateError(f"truth of a {type(v).__name__} is not in the supported subset")


def _call(words: list[str], dot: Any, root: Any) -> Any:
    f, xs = words[0], [_value(w, dot, root) for w in words[1:]]
    if f in ("not", "len") and len(xs) != 1:
        raise GoTemplateError(f"{f} takes one argument, got {len(xs)}")
    if (f in ("eq", "ne") and len(xs) < 2) or (f == "ne" and len(xs) != 2):
        raise GoTemplateError(f"wrong number of arguments for {f}: {len(xs)}")
    if f == "eq":
        return any(xs[0] == x for x in xs[1:])
    if f == "ne":
        return xs[0] != xs[1]
    if f == "not":
        return not _truth(xs[0])
    if f == "len":
        return len(xs[0].encode()) if isinstance(xs[0], str) else len(xs[0])
    if not xs:
        raise GoTemplateError(f"{f} needs at least one argument")
    for x in xs[:-1]:  # Go's and/or return the deciding argument, not a bool
        if _truth(x) != (f == "and"):
            return x
    return xs[-1]


def _eval(words: list[str], dot: Any, root: Any) -> Any:
    return _call(words, dot, root) if words[0] in _FUNCS else _value(words[0], dot, root)


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    raise GoTemplateError(f"printing a {type(v).__name__} is not in the supported subset")


def _run(nodes: list[_Node], dot: Any, root: Any, out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "out":
            out.append(_text(_eval(n.args, dot, root)))
        elif n.kind == "range":
            items = _eval(n.args, dot, root)
            if items is None:
                continue
            if not isinstance(items, list | tuple):
                raise GoTemplateError(f"range over a {type(items).__name__} is not in the supported subset")
            for item in items:
                _run(n.body, item, root, out)
        else:
            for cond, body in n.branches:
                if cond is None or _truth(_eval(cond, dot, root)):
                    _run(body, dot, root, out)
                    break


def parse(tpl: str) -> list[_Node]:
    """Parse ``tpl``; ``GoTemplateError`` for anything outside the subset."""
    nodes, _ = _parse(_lex(tpl), 0, ())
    return nodes


def render(tpl: str, data: Any) -> str:
    """Execute ``tpl`` with ``data`` (dicts and lists; ``.X`` reads key ``X``) as Go would."""
    out: list[str] = []
    _run(parse(tpl), data, data, out)
    return "".join(out)
