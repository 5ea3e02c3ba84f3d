"""Chat templates described by a JSON file (shipped or user-written).

A JSON template is data, not code: each role has an ``open`` / ``content`` /
``close`` pattern, plus a few family-wide settings (BOS text, default system
prompt, where the system prompt goes, reasoning and tool-call formats). The
schema is documented in ``docs/templates.md``. Rendering needs no tokenizer.

Placeholders are ``{content}``, ``{reasoning}``, ``{name}``, ``{arguments}``,
``{arguments_kwargs}``, ``{tool}``, ``{tools}`` and ``{tools_json}``. Only these
exact names are substituted, in one pass, so literal JSON braces in a pattern
(``{"name": ...}``) and braces inside user text are left alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import TemplateError
from sftkit.core.textfile import read_text
from sftkit.templates.base import Segment

_PLACEHOLDER = re.compile(r"\{(content|reasoning|name|arguments|arguments_kwargs|tool|tools|tools_json)\}")


def fill(pattern: str, **values: str) -> str:
    """Substitute known placeholders; one pass, so substituted text is never re-read."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), pattern)


class _Strict(BaseModel):
    # Unknown keys are almost always typos ("clsoe"); refuse them instead of ignoring.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnSpec(_Strict):
    open: str = ""
    content: str = "{content}"
    close: str = ""
    merge_consecutive: bool = False
    trim: bool = False


class ToolsSpec(_Strict):
    placement: Literal["system", "first_user"] = "system"
    format: str
    item: str = "{tool}"
    indent: int | None = None
    separator: str = "\n\n"


class TemplateSpec(_Strict):
    name: str
    description: str = ""
    bos: str = ""
    eos: str = ""
    stop_strings: list[str] = Field(min_length=1)
    default_system: str | None = None
    system_placement: Literal["turn", "first_user"] = "turn"
    system_separator: str = "\n\n"
    turns: dict[Literal["system", "user", "assistant", "tool"], TurnSpec]
    reasoning: str | None = None
    tool_call: str | None = None
    tool_call_separator: str = "\n"
    tool_call_content: str | None = None
    tools: ToolsSpec | None = None

    @model_validator(mode="after")
    def _required_turns(self) -> TemplateSpec:
        missing = [r for r in ("user", "assistant") if r not in self.turns]
        if self.system_placement == "turn" and "system" not in self.turns:
            missing.append("system")
        if missing:
            raise ValueError(f"turns is missing {', '.join(missing)}")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must not contain an empty string")
        return self


def _arguments(call: dict[str, Any]) -> dict[str, Any] | str:
    args = call.get("arguments", {})
    if isinstance(args, str):  # OpenAI rows carry arguments as a JSON string
        try:
            return json.loads(args)
        except json.JSONDecodeError:
            return args
    return args


class JSONTemplate:
    """A ``ChatTemplate`` built from a ``TemplateSpec``."""

    def __init__(self, spec: TemplateSpec, origin: str | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.origin = origin or spec.name

    @classmethod
    def from_file(cls, path: str | Path) -> JSONTemplate:
        p = Path(path)
        try:
            raw = json.loads(read_text(p, "template file", TemplateError))
        except json.JSONDecodeError as e:
            raise TemplateError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from e
        return cls.from_dict(raw, origin=str(p))

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "template") -> JSONTemplate:
        try:
            return cls(TemplateSpec.model_validate(raw), origin=origin)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise TemplateError(
                f"{origin}: invalid template at {where}: {first['msg']} (schema: docs/templates.md)"
            ) from e

    @property
    def stop_strings(self) -> list[str]:
        return list(self.spec.stop_strings)

    # -- rendering ---------------------------------------------------------

    def segments(self, conv: Conversation, add_generation_prompt: bool = False) -> list[Segment]:
        s = self.spec
        msgs = list(enumerate(conv.messages))
        system, msgs = self._split_system(conv, msgs)
        segs: list[Segment] = []
        if s.bos:
            segs.append(Segment(s.bos, "prompt", None))
        tools_text = self._tools_text(conv)
        if s.system_placement == "turn":
            sys_text = self._join_tools(system[1] if system else s.default_system, tools_text)
            if sys_text is not None:
                t = s.turns["system"]
                sys_text = sys_text.strip() if t.trim else sys_text
                body = t.open + fill(t.content, content=sys_text) + t.close
                segs.append(Segment(body, "prompt", system[0] if system else None))
            fold = None
        else:
            fold = system[1] if system else s.default_system
        first_user = True
        for pos, (i, m) in enumerate(msgs):
            prev_role = msgs[pos - 1][1].role if pos else None
            next_role = msgs[pos + 1][1].role if pos + 1 < len(msgs) else None
            if m.role == "assistant":
                t = s.turns["assistant"]
                if t.open:
                    segs.append(Segment(t.open, "prompt", i))
                segs.append(Segment(self._assistant_body(m, conv) + t.close, "reply", i))
                continue
            text = self._content(m, conv)
            if m.role == "user" and first_user:
                first_user = False
                if fold is not None:
                    text = fold + s.system_separator + text
                if s.tools and s.tools.placement == "first_user" and tools_text:
                    text = tools_text + text
            t = self._turn(m.role, conv)
            merged_in = t.merge_consecutive and prev_role == m.role
            merged_on = t.merge_consecutive and next_role == m.role
            body = ("" if merged_in else t.open) + fill(t.content, content=text, name=m.name or "")
            segs.append(Segment(body + ("" if merged_on else t.close), "prompt", i))
        if add_generation_prompt and s.turns["assistant"].open:
            segs.append(Segment(s.turns["assistant"].open, "prompt", None))
        return self._close_replies(segs, add_generation_prompt)

    def _split_system(
        self, conv: Conversation, msgs: list[tuple[int, Message]]
    ) -> tuple[tuple[int, str] | None, list[tuple[int, Message]]]:
        system = None
        if msgs and msgs[0][1].role == "system":
            system = (msgs[0][0], msgs[0][1].content)
            msgs = msgs[1:]
        for i, m in msgs:
            if m.role == "system" and self.spec.system_placement != "turn":
                raise TemplateError(
                    f"{conv.source or 'conversation'}: message {i} is a system message after the first turn; "
                    f"template {self.name!r} only supports one leading system message"
                )
        return system, msgs

    def _turn(self, role: str, conv: Conversation) -> TurnSpec:
        t = self.spec.turns.get(role)  # type: ignore[call-overload]
        if t is None:
            raise TemplateError(
                f"{conv.source or 'conversation'}: template {self.name!r} has no {role!r} turn "
                f"(this model family does not support it); drop those messages or pick another template"
            )
        return t

    def _content(self, m: Message, conv: Conversation) -> str:
        t = self._turn(m.role, conv)
        return m.content.strip() if t.trim else m.content

    def _assistant_body(self, m: Message, conv: Conversation) -> str:
        s = self.spec
        t = s.turns["assistant"]
        text = m.content.strip() if t.trim else m.content
        if m.reasoning:
            if s.reasoning is None:
                raise TemplateError(
                    f"{conv.source or 'conversation'}: the reply has a reasoning block but template "
                    f"{self.name!r} defines no 'reasoning' format"
                )
            text = fill(s.reasoning, reasoning=m.reasoning.strip()) + text
        pattern = t.content
        if m.tool_calls:
            if s.tool_call is None:
                raise TemplateError(
                    f"{conv.source or 'conversation'}: the reply makes tool calls but template "
                    f"{self.name!r} defines no 'tool_call' format"
                )
            calls = s.tool_call_separator.join(self._call(c) for c in m.tool_calls)
            text = text + s.tool_call_separator + calls if text else calls
            pattern = s.tool_call_content or pattern
        return fill(pattern, content=text)

    def _call(self, call: dict[str, Any]) -> str:
        fn = call.get("function", call)  # accept both flat and OpenAI-nested calls
        args = _arguments(fn)
        kwargs = ", ".join(f"{k}={v!r}" for k, v in args.items()) if isinstance(args, dict) else str(args)
        as_json = json.dumps(args, ensure_ascii=False) if isinstance(args, dict) else str(args)
        return fill(self.spec.tool_call or "", name=str(fn.get("name", "")), arguments=as_json, arguments_kwargs=kwargs)

    def _tools_text(self, conv: Conversation) -> str | None:
        spec = self.spec.tools
        if not conv.tools:
            return None
        if spec is None:
            raise TemplateError(
                f"{conv.source or 'conversation'}: the row declares tools but template {self.name!r} "
                "has no 'tools' format"
            )
        items = "".join(fill(spec.item, tool=json.dumps(t, ensure_ascii=False, indent=spec.indent)) for t in conv.tools)
        whole = json.dumps(conv.tools, ensure_ascii=False, indent=spec.indent)
        return fill(spec.format, tools=items, tools_json=whole)

    def _join_tools(self, system: str | None, tools: str | None) -> str | None:
        spec = self.spec.tools
        if not tools or spec is None or spec.placement != "system":
            return system
        return system + spec.separator + tools if system else tools

    def _close_replies(self, segs: list[Segment], add_generation_prompt: bool) -> list[Segment]:
        """Give every reply an end-of-turn string to train on.

        Some families (chatglm3) have no closing token: the next turn's role
        marker ends a reply, and the model is trained to emit it. That marker
        moves into the reply segment; a conversation ending on such a reply is
        closed with ``eos``, as the family's own fine-tuning code does.
        """
        stops = self.spec.stop_strings
        out = list(segs)
        for k, seg in enumerate(out):
            if seg.kind != "reply" or any(t in seg.text for t in stops):
                continue
            nxt = out[k + 1] if k + 1 < len(out) else None
            if nxt is None:
                if not add_generation_prompt and self.spec.eos:
                    out[k] = Segment(seg.text + self.spec.eos, "reply", seg.message_index)
                continue
            lead = next((t for t in stops if nxt.text.startswith(t)), None)
            if lead is not None:
                out[k] = Segment(seg.text + lead, "reply", seg.message_index)
                out[k + 1] = Segment(nxt.text[len(lead) :], nxt.kind, nxt.message_index)
        return [x for x in out if x.text]
