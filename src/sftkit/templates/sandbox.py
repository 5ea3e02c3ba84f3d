"""Jinja chat templates, rendered inside a time and size budget.

A model's chat template is code written by whoever published the model, and sftkit renders
it for every training row and every prompt. Jinja's immutable sandbox (the one transformers
uses too) blocks reaching Python internals (``''.__class__``, ``cycler.__init__.__globals__``),
but not work: ``range`` is capped at 100,000 items, yet two nested loops over it run for hours,
and ``'x' * 10**10`` asks for 10 GB. Here a template is compiled once in a sandbox that also
keeps a budget for each render:

- time: every loop iteration and every call ticks; every 256 ticks the clock is read, and a
  render past ``RENDER_SECONDS`` stops;
- size: ``*``, ``**``, ``+`` and ``%`` are checked before they run (where the operands give the
  size) and after; results of calls and filters, values stored in a ``namespace`` and the
  rendered text are held to the size limit (``MIN_CHARS`` plus ``CHARS_PER_INPUT`` times the
  conversation's own size);
- numbers: a string method or a filter given an integer above ``MAX_INT_ARG`` (a width, a
  count: ``'x'.ljust(10**9)``, ``x | center(10**9)``), or a format string with such a width, is
  refused before it allocates anything (integers as data, ``'%d' % 1700000000``, are fine).

Anything refused is a ``TemplateBlocked`` naming the template, the line and what was refused.
The template sees what ``tokenizer.apply_chat_template`` (transformers 5) gives it: messages
(keys with None dropped; reasoning also as ``thinking``), tools, documents,
add_generation_prompt, the special tokens, ``raise_exception``, ``strftime_now``,
``namespace``, ``dict``, the ``tojson`` filter, loop controls and ``{% generation %}``; so the
text is the same (the tests compare the two).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, wraps
from string import Formatter
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from sftkit.core.errors import TemplateBlocked, TemplateError

RENDER_SECONDS = 2.0
"""Wall-clock budget of one render (a chat template takes well under a millisecond per message)."""
MIN_CHARS = 1_000_000
CHARS_PER_INPUT = 8
"""Size limit of any value a render makes: MIN_CHARS + CHARS_PER_INPUT x the conversation's size."""
MAX_INT_ARG = 100_000
"""Largest width or count a string method, a filter or a format string may be given."""
_MAX_BITS = 100_000  # integer arithmetic past ~30,000 digits is refused (``10**10**9`` never ends)
_CHECK_EVERY = 256  # ticks between two reads of the clock


class BudgetExceeded(SecurityError):
    """A render went over its time or size budget (a ``SecurityError``: templates cannot catch it)."""


@dataclass(slots=True)
class _Budget:
    deadline: float
    max_chars: int
    ticks: int = 0


_ACTIVE: ContextVar[_Budget | None] = ContextVar("sftkit_template_budget", default=None)


def _tick() -> None:
    b = _ACTIVE.get()
    if b is None:
        return
    b.ticks += 1
    if b.ticks % _CHECK_EVERY == 0 and time.monotonic() > b.deadline:
        raise BudgetExceeded(f"the render ran over its {RENDER_SECONDS:g} s budget (a loop that does not end, "
                             "or far more work than formatting a conversation takes)")


def _max_chars() -> int:
    b = _ACTIVE.get()
    return b.max_chars if b is not None else MIN_CHARS


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > (limit := _max_chars()):
        raise BudgetExceeded(f"{what} made a value of {len(value):,} items, over the size limit of {limit:,}")
    return value


def _check_int(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARG:
        raise BudgetExceeded(f"{what} was given the integer {value}, over the limit of {MAX_INT_ARG:,}")


def _check_args(args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> None:
    for v in (*args, *kwargs.values()):
        _check_int(v, what)


_PRINTF_SPEC = re.compile(r"%[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")


def _check_printf(fmt: str, args: tuple[Any, ...], what: str) -> None:
    """Widths and precisions of a printf string (``%9999999d``; ``%*d`` takes one from the arguments)."""
    for m in _PRINTF_SPEC.finditer(fmt):
        for w in m.groups():
            if w == "*":
                _check_args(args, {}, f"{what} (a '*' width)")
            elif w:
                _check_int(int(w), f"{what} (a width in {fmt[:40]!r})")


def _check_str_format(fmt: str, what: str) -> None:
    """Widths in ``str.format`` fields (``{:>9999999}``); a width taken from an argument
    (``{:{w}}``) is refused outright."""
    try:
        fields = list(Formatter().parse(fmt))
    except ValueError:
        return  # str.format refuses it itself
    for _, _, spec, _ in fields:
        if spec and "{" in spec:
            raise BudgetExceeded(f"{what}: a format width from an argument ({fmt[:40]!r}) is not allowed")
        for w in re.findall(r"\d+", spec or ""):
            _check_int(int(w), f"{what} (a width in {fmt[:40]!r})")


def _check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse before it runs an operation whose result size follows from its operands."""
    ints = isinstance(left, int) and isinstance(right, int)
    if op == "*" and ints and left.bit_length() + right.bit_length() > _MAX_BITS:
        raise BudgetExceeded(f"multiplying two integers of {left.bit_length():,} and {right.bit_length():,} bits")
    if op == "*" and not ints:
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(n, int) and isinstance(seq, (str, list, tuple)) and len(seq) * n > (limit := _max_chars()):
            raise BudgetExceeded(f"'*' would make a value of {len(seq) * n:,} items, over the size limit of {limit:,}")
    if op == "**" and ints and right > 0 and abs(left) > 1 and right * abs(left).bit_length() > _MAX_BITS:
        raise BudgetExceeded(f"{left} ** {right} has over {_MAX_BITS:,} bits")
    if op == "%" and isinstance(left, str):
        _check_printf(left, right if isinstance(right, tuple) else (right,), "'%' formatting")


class _LoopBudget(CodeGenerator):
    """Compiles every ``{% for %}`` to iterate through the ``_sftkit_tick`` filter, so that each
    iteration ticks the budget, also in loops that output nothing and call nothing."""

    def visit_Template(self, node: nodes.Template, frame: Any = None) -> None:
        for loop in node.find_all(nodes.For):  # before code generation: it collects the filters used first
            loop.iter = nodes.Filter(loop.iter, "_sftkit_tick", [], [], None, None, lineno=loop.iter.lineno)
        super().visit_Template(node, frame)


def _ticking(iterable: Any) -> Any:
    for item in iterable:
        _tick()
        yield item


class _Generation(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for transformers' assistant
    masks; sftkit finds replies by rendering prefixes, so the block is its body, in its own scope."""

    tags = {"generation"}  # noqa: RUF012 - Jinja's Extension API

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Namespace(Namespace):
    """``namespace()`` without underscore names (no reaching internals through it), its values
    held to the size limit (``{% set ns.s = ns.s ~ ns.s %}`` in a loop doubles a string)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name, value in attrs.items():
            _Namespace._check(name, value)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name, value)
        super().__setitem__(name, value)

    @staticmethod
    def _check(name: Any, value: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"namespace attribute {name!r}: names starting with '_' are not allowed")
        _check_size(value, f"namespace attribute {name!r}")


class _Dict:
    """``dict(...)`` for templates, without handing them the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return _check_size(dict(*args, **kwargs), "dict()")

    def fromkeys(self, *args: Any) -> dict[Any, Any]:
        return _check_size(dict.fromkeys(*args), "dict.fromkeys()")


def _raise_exception(message: Any) -> None:
    raise jinja2.exceptions.TemplateError(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    # transformers' tojson: no HTML escaping (Jinja's own escapes <, > and &), JSON options exposed
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _guarded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    what = f"the {name!r} filter"
    skip = 2 if getattr(f, "jinja_pass_arg", None) is not None else 1  # (context,) value: data, not sizes

    @wraps(f)  # keeps Jinja's pass_context / pass_eval_context marks
    def run(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if name == "format" and args and isinstance(args[0], str):
            _check_printf(args[0], args[1:], what)  # the other arguments are the values
        else:
            _check_args(args[skip:], kwargs, what)  # widths and counts: center(80), indent(4), truncate(255)
        return _check_size(f(*args, **kwargs), what)

    return run


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _LoopBudget
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, "jinja2.ext.loopcontrols"])
        self.filters["tojson"] = _tojson
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters["_sftkit_tick"] = _ticking
        self.globals.pop("lipsum", None)  # random filler text of any length: no chat template needs it
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                            namespace=_Namespace)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return _check_size(super().call_binop(context, operator, left, right), f"'{operator}'")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        # A method of a string or number given a huge integer allocates it: 'x'.ljust(10**9),
        # (1).to_bytes(10**9). Elsewhere an integer is data (macros, namespace(), dict()).
        if isinstance(getattr(__obj, "__self__", None), (str, bytes, int, float)):
            _check_args(args, kwargs, f"calling {getattr(__obj, '__name__', '?')}()")
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_str_format(value.__self__, "str.format")
        return wrapped

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja returns an undefined value that fails only when used; refusing at once names what was tried.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


_ENV = _Sandbox()


def _template_line(exc: BaseException) -> int | None:
    """The template line being rendered when ``exc`` was raised (Jinja maps its frames to lines)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def _at(where: str, line: int | None) -> str:
    """``evil.jinja:3`` for a file; ``the chat template of MODEL (line 3)`` otherwise."""
    if not line:
        return where
    return f"{where}:{line}" if where.endswith((".jinja", ".j2")) else f"{where} (line {line})"


def _blocked(where: str, line: int | None, what: str) -> TemplateBlocked:
    return TemplateBlocked(f"{_at(where, line)}: chat template blocked by sftkit's template sandbox: "
                           f"{what.rstrip('.')}. A chat template may only format the conversation; fix or replace "
                           "it (`template:` in the config, `--template`), e.g. with a shipped one "
                           "(`sft template list`)")


def compile_template(source: str, where: str) -> jinja2.Template:
    """The compiled template; a syntax error or a refused constant is a ``TemplateError``.
    ``where`` names the template in messages (a file path, or "the chat template of MODEL")."""
    try:
        return _compile(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{_at(where, e.lineno)}: not a valid Jinja chat template: {e.message}") from None
    except (SecurityError, OverflowError, MemoryError, RecursionError) as e:
        raise _blocked(where, getattr(e, "lineno", None), str(e) or type(e).__name__) from None


def _render(template: jinja2.Template, context: dict[str, Any], max_chars: int) -> str:
    out, size = [], 0
    token = _ACTIVE.set(_Budget(time.monotonic() + RENDER_SECONDS, max_chars))
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > max_chars:
                raise BudgetExceeded(f"the rendered text passed the size limit of {max_chars:,} characters")
            out.append(chunk)
    finally:
        _ACTIVE.reset(token)
    return "".join(out)


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """As transformers passes a message: keys whose value is None dropped, reasoning under both names."""
    m = {k: v for k, v in m.items() if v is not None}
    reasoning = next((m[k] for k in ("reasoning_content", "thinking", "reasoning") if k in m), None)
    return {"thinking": reasoning, **m, "reasoning_content": reasoning} if reasoning is not None else m


def render_chat(source: str, where: str, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool,
                special_tokens: dict[str, Any]) -> str:  # fmt: skip
    """``source`` rendered for ``messages`` within the budget. The template refusing the conversation
    (``raise_exception``, an undefined value) is a ``TemplateError``; the sandbox or the budget
    refusing the template is a ``TemplateBlocked``."""
    template = compile_template(source, where)
    msgs = [_message(m) for m in messages]
    context = {**special_tokens, "messages": msgs, "tools": tools, "documents": None,
               "add_generation_prompt": add_generation_prompt}
    size = sum(len(str(v)) for m in msgs for v in m.values()) + (len(json.dumps(tools, default=str)) if tools else 0)
    try:
        return _render(template, context, MIN_CHARS + CHARS_PER_INPUT * size)
    except (SecurityError, OverflowError, MemoryError, RecursionError) as e:
        raise _blocked(where, _template_line(e), str(e) or type(e).__name__) from None
    except jinja2.TemplateError as e:  # raise_exception, an undefined variable used
        raise TemplateError(f"{_at(where, _template_line(e))}: the chat template cannot render this "
                            f"conversation: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise TemplateError(f"{_at(where, _template_line(e))}: the chat template failed on this conversation: "
                            f"{type(e).__name__}: {e}") from None
