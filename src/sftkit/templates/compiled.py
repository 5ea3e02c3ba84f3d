"""A tokenizer's Jinja chat template, compiled to a JSON template when it provably renders the same.

Locating reply spans through Jinja costs two full renders per reply (see ``hf.py``).
Most chat templates, though, wrap each message in a fixed per-role text. ``compile_jinja``
reads those wrappers off the template's own output for conversations of sentinel
strings, builds the equivalent ``JSONTemplate`` (one cheap render per conversation), and
keeps it only if it gives exactly the Jinja segments (texts, reply spans) on a probe set:
with and without a system prompt (so a default system prompt is covered), multi-turn,
generation prompts, and contents a template might treat specially (empty, surrounding
whitespace, Chinese, emoji, special-token text, Jinja syntax). A template that changes or
branches on content in any probe is not compiled at all.

The probes cannot cover every row, so ``HFChatTemplate`` also compares the two forms on
the first row of every new row *shape* (``shape``) and uses the compiled form only for
shapes that matched; rows of any other shape keep going through Jinja.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import TemplateBlocked, TemplateError
from sftkit.templates.base import Segment
from sftkit.templates.json_template import JSONTemplate

Render = Callable[[list[dict[str, str]], bool], str]
Shape = tuple[Any, ...]

# Sentinels stand for message contents; the text between them is the template's wrapper.
_S, _U1, _A1, _U2, _A2, _T = (f"SFTKIT{x}SENTINEL" for x in ("SYS", "USR1", "AST1", "USR2", "AST2", "TOOL"))

# Contents templates are known to treat specially (strip, test for emptiness, split on
# markers): every probe renders each of them in every role.
PROBE_CONTENTS = (
    "Hi!",
    "你好，世界。请用中文回答。",
    "emoji 😊👍🏽👨‍👩‍👧 mixed 中文",
    "  leading and trailing spaces  ",
    "\n\nnew\nlines\n\n",
    "",
    "<|im_end|> <|im_start|>user\n<|eot_id|></s><s>",
    "{{ messages }} {% if x %}jinja{% endif %} {# c #}",
    "<think>\nhidden\n</think>\n\nvisible",
    "tab\tand\r\ncarriage",
)

# Role sequences (s=system, u=user, a=assistant) rendered with and without a generation prompt.
PROBE_SHAPES = ("ua", "sua", "uaua", "suauaua", "u", "su", "uau", "suau")
_ROLES = {"s": "system", "u": "user", "a": "assistant"}


def shape(conv: Conversation, add_generation_prompt: bool) -> Shape:
    """What a template's control flow may depend on, apart from the message texts: the
    roles in order, which optional fields each message has, whether tools are declared."""
    return (
        add_generation_prompt,
        bool(conv.tools),
        tuple((m.role, not m.content, bool(m.reasoning), bool(m.tool_calls), bool(m.name)) for m in conv.messages),
    )


def normal_form(segs: Sequence[Segment]) -> list[tuple[str, int | None, str]]:
    """Segments as the renderer uses them: the text, and which spans are which reply.

    Adjacent prompt segments merge (how the prompt text is cut is irrelevant to masking)."""
    out: list[tuple[str, int | None, str]] = []
    for s in segs:
        if not s.text:
            continue
        if s.kind == "prompt" and out and out[-1][0] == "prompt":
            out[-1] = ("prompt", None, out[-1][2] + s.text)
        else:
            out.append((s.kind, s.message_index if s.kind == "reply" else None, s.text))
    return out


def _between(text: str, marks: Sequence[str]) -> list[str] | None:
    """``text`` cut at each mark in order: the text before the first, between each pair,
    after the last; ``None`` if a mark is missing or repeated (not a plain wrapper)."""
    pieces, pos = [], 0
    for m in marks:
        at = text.find(m, pos)
        if at < 0 or text.count(m) != 1:
            return None
        pieces.append(text[pos:at])
        pos = at + len(m)
    pieces.append(text[pos:])
    return pieces


def _strip(text: str, prefix: str = "", suffix: str = "") -> str | None:
    if not text.startswith(prefix) or not text.endswith(suffix) or len(text) < len(prefix) + len(suffix):
        return None
    return text[len(prefix) : len(text) - len(suffix)]


def _chat(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


def _tool_turn(render: Render, gen_prompt: str, assistant_close: str) -> dict[str, str] | None:
    """The wrapper of a ``tool`` message, if the template renders one after a reply."""
    try:
        text = render(_chat(("user", _U1), ("assistant", _A1), ("tool", _T), ("assistant", _A2)), False)
    except TemplateBlocked:
        raise
    except Exception:  # noqa: BLE001 - a template may refuse tool turns without tool calls
        return None
    p = _between(text, [_U1, _A1, _T, _A2])
    if p is None:
        return None
    tool_open, tool_close = _strip(p[2], prefix=assistant_close), _strip(p[3], suffix=gen_prompt)
    if tool_open is None or tool_close is None:
        return None
    return {"open": tool_open, "close": tool_close}


def infer_spec(render: Render, eos: str, name: str) -> dict[str, Any] | None:
    """A JSON template spec read off ``render``'s output, or ``None`` if the template is not
    a fixed wrapper per role (that is only a guess: ``compile_jinja`` verifies it)."""
    nogen, gen = render(_chat(("user", _U1)), False), render(_chat(("user", _U1)), True)
    full = render(_chat(("system", _S), ("user", _U1), ("assistant", _A1), ("user", _U2), ("assistant", _A2)), False)
    nosys = render(_chat(("user", _U1), ("assistant", _A1)), False)
    gen_prompt = _strip(gen, prefix=nogen)
    p = _between(full, [_S, _U1, _A1, _U2, _A2])
    head = _between(nosys, [_U1, _A1])
    if not gen_prompt or p is None or head is None or p[2] != p[4]:
        return None
    assistant_close = p[5]
    user_open, user_close = _strip(p[3], prefix=assistant_close), _strip(p[2], suffix=gen_prompt)
    if user_open is None or user_close is None:
        return None
    system_close = _strip(p[1], suffix=user_open)
    before_user = _strip(head[0], suffix=user_open)  # BOS text, or BOS + the default system turn
    if system_close is None or before_user is None:
        return None
    default = _strip(before_user, prefix=p[0], suffix=system_close)
    if default is not None:  # every rendering starts with a system turn: BOS is part of its opening
        bos, system_open = "", p[0]
    elif p[0].startswith(before_user):
        bos, system_open = before_user, p[0][len(before_user) :]
    else:
        return None
    turns = {
        "system": {"open": system_open, "close": system_close},
        "user": {"open": user_open, "close": user_close},
        "assistant": {"open": gen_prompt, "close": assistant_close},
    }
    tool = _tool_turn(render, gen_prompt, assistant_close)
    if tool is not None:
        turns["tool"] = tool
    return {"name": name, "bos": bos, "stop_strings": [eos], "default_system": default, "turns": turns}


def probes() -> list[tuple[Conversation, bool]]:
    """The load-time probe set: every probe shape with plain contents, and the odd contents
    in every role of the longest shapes; each with and without a generation prompt."""
    out = []
    for k, roles in enumerate(PROBE_SHAPES):
        contents = [PROBE_CONTENTS[(k + j) % 3] for j in range(len(roles))]
        out.append(Conversation([Message(_ROLES[r], c) for r, c in zip(roles, contents, strict=True)]))  # type: ignore[arg-type]
    for c in PROBE_CONTENTS:
        for roles in ("suaua", "uaua"):
            out.append(Conversation([Message(_ROLES[r], f"{c}{j}" if c else c) for j, r in enumerate(roles)]))  # type: ignore[arg-type]
    return [(c, gen) for c in out for gen in (False, True)]


def agrees(fast: JSONTemplate, conv: Conversation, gen: bool, jinja: Sequence[Segment]) -> bool:
    """Whether the compiled form gives ``jinja``'s segments for ``conv``."""
    try:
        return normal_form(fast.segments(conv, add_generation_prompt=gen)) == normal_form(jinja)
    except TemplateError:
        return False


def compile_jinja(jinja_segments: Callable[[Conversation, bool], list[Segment]], render: Render, eos: str | None,
                  name: str) -> JSONTemplate | None:  # fmt: skip
    """The compiled form of a Jinja template, or ``None`` when it is not provably the same
    on the probe set (the caller then renders every row through Jinja)."""
    if not eos:
        return None
    try:
        spec = infer_spec(render, eos, name)
        fast = JSONTemplate.from_dict(spec, origin=f"{name} (compiled)") if spec else None
    except TemplateBlocked:
        raise  # the sandbox refused the template: loading it fails, whatever the form
    except Exception:  # noqa: BLE001 - any template error means: not compilable, use Jinja
        return None
    if fast is None:
        return None
    for conv, gen in probes():
        try:
            want = jinja_segments(conv, gen)
        except TemplateBlocked:
            raise
        except Exception:  # noqa: BLE001 - a shape the template refuses is verified per row, if it ever occurs
            continue
        if not agrees(fast, conv, gen, want):
            return None
    return fast
