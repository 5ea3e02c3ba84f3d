"""An Ollama Modelfile for an exported GGUF: ``FROM``, ``TEMPLATE``, ``SYSTEM``, ``PARAMETER stop``.

Ollama renders prompts with a Go ``text/template`` of its own, not with the GGUF's Jinja
``chat_template`` (without ``TEMPLATE`` it guesses one by similarity). So the Modelfile carries
the run's template translated to Go: a JSON template as it is, a tokenizer's Jinja template
through its compiled form (``sftkit.templates.compiled``: the fixed per-role wrappers proven
equal to the Jinja on probes). A template that is not a fixed wrapper per role with a system
turn is refused, since no Go text could be checked against it.

The Go text uses only ``range``, ``if/else if``, ``eq`` and ``{{.Content}}`` (no trim markers:
``{{-`` would also eat newlines that belong to the turn markers), which ``gotemplate.py``
renders exactly. ``ollama_prompt`` adds what Ollama's server does before rendering (the
Modelfile's ``SYSTEM`` becomes a leading system message when a request has none; consecutive
messages of one role are merged with a blank line), so tests can compare the prompt Ollama
would build with sftkit's own rendering, without Ollama.

Known differences, reported as notes: Go templates cannot trim, so a template with
``trim: true`` differs on contents with surrounding white space; Ollama merges consecutive
messages of one role; the Modelfile template renders message contents only (no tools, tool
calls or reasoning blocks).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.core.errors import ExportError, RefusedPath
from sftkit.core.safepaths import write_text_atomic
from sftkit.export.gotemplate import render
from sftkit.templates.base import ChatTemplate
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.json_template import _PLACEHOLDER, JSONTemplate, TurnSpec

HEADER = "# Ollama Modelfile written by sftkit"
_ROLES = ("system", "user", "assistant", "tool")
# Ollama model names: [host/][namespace/]model[:tag], letters, digits, '_', '-', '.'
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME = re.compile(rf"^{_PART}(/{_PART}){{0,2}}(:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?$")


class ModelfileError(ExportError):
    """The run's template or stops cannot be written as an Ollama Modelfile (what, and what to do)."""


@dataclass(slots=True)
class Modelfile:
    text: str
    template: str  # the Go template in TEMPLATE
    system: str | None
    stops: list[str]
    notes: list[str] = field(default_factory=list)  # where Ollama's prompt differs from sftkit's


# -- template -> Go ------------------------------------------------------------------------


def as_json_template(template: ChatTemplate) -> JSONTemplate:
    """The JSON form of ``template``: itself, or the compiled form of a tokenizer's Jinja template."""
    if isinstance(template, JSONTemplate):
        return template
    if isinstance(template, HFChatTemplate):
        if template.compiled is None:
            raise ModelfileError(
                f"{template.where} is not a fixed text around each message (sftkit could not compile it to a JSON "
                "template), so no Ollama TEMPLATE can be derived and checked: export with a JSON template "
                "(`template:` in the run config, see `sft template list`), or write TEMPLATE in the Modelfile by hand")
        return template.compiled
    raise ModelfileError(f"template {getattr(template, 'name', template)!r}: only JSON templates and tokenizer "
                         "(Jinja) templates can be translated for Ollama")


def _literal_runs(parts: list[tuple[str, str]]) -> str:
    """Join ``("text"|"act", s)`` parts into Go template source; literal ``{{`` (and a ``{``
    right before an action) come from string-literal actions, since Go would read them as delimiters."""
    out: list[str] = []
    for k, (kind, s) in enumerate(parts):
        if kind == "act":
            out.append(s)
            continue
        text = s.replace("{{", '{{"{{"}}')
        if text.endswith("{") and k + 1 < len(parts):
            text = text[:-1] + '{{"{"}}'
        out.append(text)
    return "".join(out)


def _wrapper(t: JSONTemplate, role: str, spec: TurnSpec) -> tuple[str, str]:
    """``(open, close)`` with the content pattern's fixed text folded in."""
    pattern = spec.content
    names = [m.group(1) for m in _PLACEHOLDER.finditer(pattern)]
    if names != ["content"]:
        raise ModelfileError(f"template {t.name!r}: the {role} turn's content pattern {pattern!r} uses "
                             f"{', '.join('{' + n + '}' for n in names if n != 'content') or 'no {content}'}, which "
                             "an Ollama template cannot fill; write TEMPLATE in the Modelfile by hand")
    before, after = pattern.split("{content}", 1)
    return spec.open + before, after + spec.close


def _notes(t: JSONTemplate) -> list[str]:
    s = t.spec
    notes = ["Ollama merges consecutive messages of one role (joined by a blank line) before rendering"]
    trimmed = [r for r in _ROLES if r in s.turns and s.turns[r].trim]  # type: ignore[index]
    if trimmed:
        notes.append(f"template {t.name!r} trims {', '.join(trimmed)} contents; Go templates cannot, so contents "
                     "with leading or trailing white space render with it in Ollama")
    if s.reasoning or s.tool_call or s.tools:
        notes.append("the Ollama template renders message contents only (no tools, tool calls or reasoning blocks)")
    if s.default_system == "":
        notes.append("the template's empty default system turn is not written (Ollama ignores an empty SYSTEM)")
    return notes


def go_template(template: JSONTemplate, add_bos: bool) -> tuple[str, list[str]]:
    """The Go template for ``template`` and the notes on where it differs. ``add_bos``: the
    GGUF's tokenizer adds BOS itself, so the template's BOS text is left out (no double BOS)."""
    s = template.spec
    if s.system_placement != "turn":
        raise ModelfileError(f"template {template.name!r} puts the system prompt inside the first user turn "
                             "(system_placement: first_user), which the Modelfile template sftkit writes cannot "
                             "express; write TEMPLATE in the Modelfile by hand")
    notes = _notes(template)
    parts: list[tuple[str, str]] = [("text", "" if add_bos else s.bos), ("act", "{{range .Messages}}")]
    first = True
    for role in _ROLES:
        spec = s.turns.get(role)  # type: ignore[call-overload]
        if spec is None:
            continue
        try:
            open_, close = _wrapper(template, role, spec)
        except ModelfileError:
            if role != "tool":
                raise
            notes.append(f"tool messages are not rendered (the tool turn's pattern {spec.content!r} needs a name)")
            continue
        parts += [("act", ("{{if" if first else "{{else if") + ' eq .Role "' + role + '"}}'), ("text", open_),
                  ("act", "{{.Content}}"), ("text", close)]
        first = False
    parts += [("act", "{{end}}{{end}}"), ("text", s.turns["assistant"].open)]  # the generation prompt, as sftkit's
    return _literal_runs(parts), notes


# -- the Modelfile ------------------------------------------------------------------------------


def _quoted(value: str, what: str) -> str:
    """A Modelfile value: ``"..."`` when it fits on one line, else ``\"\"\"...\"\"\"``. Ollama's parser
    knows no escapes and drops control characters, so values it cannot hold are refused."""
    bad = [c for c in value if (ord(c) < 32 and c not in "\n\t") or ord(c) == 127]
    if bad:
        raise ModelfileError(f"{what} {value[:40]!r} holds control characters Ollama's Modelfile parser drops")
    if '"' not in value and "\n" not in value:
        return '"' + value + '"'
    if '"""' in value or value.endswith('"'):
        raise ModelfileError(f'{what} {value[:40]!r} contains \'"""\' or ends with \'"\', which a Modelfile value '
                             "cannot hold")
    return '"""' + value + '"""'


def modelfile(gguf_name: str, template: ChatTemplate, stops: list[str], add_bos: bool,
              system: str | None = None, name: str | None = None) -> Modelfile:
    """The Modelfile for ``gguf_name`` (a file beside it). ``system`` overrides the template's
    default system prompt; ``stops``: every stop string (each becomes ``PARAMETER stop``)."""
    jt = as_json_template(template)
    tpl, notes = go_template(jt, add_bos)
    system = jt.spec.default_system if system is None else system
    stops = list(dict.fromkeys(x for x in stops if x))
    if not stops:
        raise ModelfileError("no stop strings: the Modelfile needs at least the template's end-of-turn token")
    lines = [f"{HEADER} (sft export --ollama) for {gguf_name}"]
    if name:
        lines.append(f"# Create the model: {create_command(name, 'Modelfile')}")
    lines += [f"FROM ./{gguf_name}", "TEMPLATE " + _quoted(tpl, "the template")]
    if system:
        lines.append("SYSTEM " + _quoted(system, "the system prompt"))
    lines += ["PARAMETER stop " + _quoted(x, "the stop string") for x in stops]
    return Modelfile("\n".join(lines) + "\n", tpl, system or None, stops, notes)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ModelfileError(f"--ollama {name!r}: not an Ollama model name; use letters, digits, '_', '-', '.', "
                             "an optional namespace/ and an optional :tag (e.g. my-assistant:q8_0)")
    return name


def create_command(name: str, modelfile_path: str | Path) -> str:
    return f"ollama create {shlex.quote(check_name(name))} -f {shlex.quote(str(modelfile_path))}"


def is_own(path: Path) -> bool:
    """Whether ``path`` is a Modelfile sftkit wrote (its first line is ``HEADER``)."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().startswith(HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def check_writable(path: Path) -> None:
    """Refuse ``path`` unless it is absent or a Modelfile sftkit wrote."""
    if path.is_symlink() or (path.exists() and not (path.is_file() and is_own(path))):
        raise RefusedPath(f"{path} exists and is not a Modelfile sftkit wrote; it was left unchanged: move it "
                          "away or choose another output folder")


def write(path: Path, mf: Modelfile) -> Path:
    """Write ``mf`` to ``path``; an existing file is replaced only if sftkit wrote it."""
    check_writable(path)
    write_text_atomic(path, mf.text)
    return path


# -- reading back, and what Ollama does with it ------------------------------------------------

_CMD = re.compile(r"([A-Za-z]+)[ \t]+")
_PARAM = re.compile(r"([A-Za-z0-9_]+)[ \t]+")


def _value(text: str, i: int) -> tuple[str, int]:
    if text.startswith('"""', i):
        j = text.index('"""', i + 3)
        return text[i + 3 : j], j + 3
    if text.startswith('"', i):
        j = text.index('"', i + 1)
        return text[i + 1 : j], j + 1
    j = text.find("\n", i)
    j = len(text) if j < 0 else j
    return text[i:j].strip(), j


def parse_modelfile(text: str) -> dict[str, Any]:
    """What Ollama's parser reads from the Modelfiles this module writes: ``{"from", "template",
    "system", "parameters": {name: [values]}}`` (comments skipped, values unquoted)."""
    out: dict[str, Any] = {"parameters": {}}
    i = 0
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        if text.startswith("#", i):
            i = text.find("\n", i) + 1 or len(text)
            continue
        m = _CMD.match(text, i)
        if not m:
            break
        cmd, i = m.group(1).lower(), m.end()
        pname = None
        if cmd == "parameter":
            pm = _PARAM.match(text, i)
            if pm is None:
                raise ValueError(f"PARAMETER without a name at offset {i}")
            pname, i = pm.group(1), pm.end()
        val, i = _value(text, i)
        if pname is not None:
            out["parameters"].setdefault(pname, []).append(val)
        else:
            out[cmd] = val
    return out


def ollama_messages(system: str | None, messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Ollama's server side: SYSTEM prepended when the first message is not a system message,
    then consecutive messages of one role (tool excepted) merged with a blank line."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    collated: list[dict[str, str]] = []
    for m in msgs:
        if collated and collated[-1]["Role"] == m["role"] and m["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    return "\n\n".join(m["content"] for m in msgs if m["role"] == "system"), collated


def template_data(system: str | None, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The values Ollama passes to a ``.Messages`` template (the fields sftkit's templates may read)."""
    joined, collated = ollama_messages(system, messages)
    return {"System": joined, "Messages": collated, "Prompt": "", "Response": "", "Tools": []}


def ollama_prompt(parsed: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """The prompt Ollama builds from a parsed Modelfile for a chat request (``gotemplate.render``)."""
    return render(parsed["template"], template_data(parsed.get("system"), messages))
