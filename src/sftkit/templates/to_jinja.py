"""A JSON chat template -> an equivalent Jinja ``chat_template``, verified.

An exported folder must carry the template it was trained with in the form other tools read
(``tokenizer.apply_chat_template``, vLLM, TGI, ``sft serve --engine vllm``): Jinja. The Jinja
below mirrors ``JSONTemplate.segments`` feature by feature; ``verify`` renders probe
conversations both ways so that an export only claims what was checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sftkit.core.conversation import Conversation
from sftkit.templates.hf import _to_hf
from sftkit.templates.json_template import _PLACEHOLDER, JSONTemplate, TurnSpec


def _lit(s: str) -> str:
    # A JSON string literal is a valid Jinja string literal (Jinja decodes the same backslash escapes).
    return json.dumps(s, ensure_ascii=False)


def _fill(pattern: str, **values: str) -> str:
    """A Jinja expression for ``fill(pattern, ...)``: literals and the given
    expressions joined with ``~``; placeholders without a value become ''."""
    parts: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(pattern):
        if m.start() > pos:
            parts.append(_lit(pattern[pos : m.start()]))
        if values.get(m.group(1)):
            parts.append(f"({values[m.group(1)]})")
        pos = m.end()
    if pos < len(pattern):
        parts.append(_lit(pattern[pos:]))
    return " ~ ".join(parts) or "''"


def _raise(msg: str) -> str:
    return "{{- raise_exception(" + _lit(msg) + ") -}}"


def _tools_block(t: JSONTemplate) -> list[str]:
    s = t.spec
    if s.tools is None:
        return ["{%- if tools -%}" + _raise(f"template {s.name!r} has no 'tools' format") + "{%- endif -%}"]
    ind = "none" if s.tools.indent is None else str(s.tools.indent)
    item = _fill(s.tools.item, tool=f"t|tojson(indent={ind})")
    fmt = _fill(s.tools.format, tools="ns.items", tools_json=f"tools|tojson(indent={ind})")
    return ["{%- if tools -%}{%- for t in tools -%}{%- set ns.items = ns.items ~ " + item + " -%}{%- endfor -%}"
            "{%- set ns.tools = " + fmt + " -%}{%- endif -%}"]


def _system_block(t: JSONTemplate) -> list[str]:
    s = t.spec
    default = "none" if s.default_system is None else _lit(s.default_system)
    out = ["{%- if ns.has_sys -%}{%- set ns.base = ns.sys -%}{%- else -%}{%- set ns.base = " + default
           + " -%}{%- endif -%}"]
    if s.system_placement != "turn":
        return [*out, "{%- set ns.fold = ns.base -%}"]
    if s.tools is not None and s.tools.placement == "system":
        out.append("{%- if ns.tools -%}{%- if ns.base -%}{%- set ns.base = ns.base ~ " + _lit(s.tools.separator)
                   + " ~ ns.tools -%}{%- else -%}{%- set ns.base = ns.tools -%}{%- endif -%}{%- endif -%}")
    st = s.turns["system"]
    text = "ns.base|trim" if st.trim else "ns.base"
    out.append("{%- if ns.base is not none -%}{{- " + _lit(st.open) + " ~ " + _fill(st.content, content=text)
               + " ~ " + _lit(st.close) + " -}}{%- endif -%}")
    return out


def _assistant_block(t: JSONTemplate) -> list[str]:
    s = t.spec
    at = s.turns["assistant"]
    out = ["{%- set ns.text = message.content" + ("|trim" if at.trim else "") + " -%}"]
    if s.reasoning is not None:
        out.append("{%- if message.reasoning_content -%}{%- set ns.text = "
                   + _fill(s.reasoning, reasoning="message.reasoning_content|trim") + " ~ ns.text -%}{%- endif -%}")
    else:
        out.append("{%- if message.reasoning_content -%}" + _raise(f"template {s.name!r} has no reasoning format")
                   + "{%- endif -%}")
    if s.tool_call is not None:
        kwargs = ""
        if "{arguments_kwargs}" in s.tool_call:
            # Python repr() of simple values, as the JSON template writes them.
            kwargs = ("{%- set ns.kw = '' -%}{%- if args is mapping -%}{%- for k, v in args.items() -%}"
                      "{%- set ns.kw = ns.kw ~ (', ' if not loop.first else '') ~ k ~ '=' ~ "
                      "((\"'\" ~ v ~ \"'\") if v is string else (v|string)) -%}{%- endfor -%}"
                      "{%- else -%}{%- set ns.kw = args|string -%}{%- endif -%}")
        call = _fill(s.tool_call, name="fn.name", arguments="args_json", arguments_kwargs="ns.kw")
        sep = _lit(s.tool_call_separator)
        out.append(
            "{%- if message.tool_calls -%}{%- set ns.calls = '' -%}{%- for tc in message.tool_calls -%}"
            "{%- set fn = tc.function if tc.function is defined else tc -%}"
            "{%- set args = fn.arguments if fn.arguments is defined else {} -%}"
            "{%- set args_json = args if args is string else args|tojson -%}" + kwargs
            + "{%- set ns.calls = ns.calls ~ (" + sep + " if not loop.first else '') ~ " + call + " -%}{%- endfor -%}"
            "{%- if ns.text -%}{%- set ns.text = ns.text ~ " + sep + " ~ ns.calls -%}"
            "{%- else -%}{%- set ns.text = ns.calls -%}{%- endif -%}"
            "{%- set ns.body = " + _fill(s.tool_call_content or at.content, content="ns.text") + " -%}"
            "{%- else -%}{%- set ns.body = " + _fill(at.content, content="ns.text") + " -%}{%- endif -%}")
    else:
        out.append("{%- if message.tool_calls -%}" + _raise(f"template {s.name!r} has no tool_call format")
                   + "{%- endif -%}{%- set ns.body = " + _fill(at.content, content="ns.text") + " -%}")
    out.append("{%- set ns.reply = ns.body ~ " + _lit(at.close) + " -%}{{- " + _lit(at.open) + " ~ ns.reply -}}")
    if s.eos:
        # A final reply without an end-of-turn string is closed with eos (JSONTemplate._close_replies).
        no_stop = " and ".join(f"{_lit(x)} not in ns.reply" for x in s.stop_strings)
        out.append("{%- if loop.last and not add_generation_prompt and " + no_stop + " -%}{{- " + _lit(s.eos)
                   + " -}}{%- endif -%}")
    return out


def _turn_block(t: JSONTemplate, role: str, spec: TurnSpec) -> list[str]:
    s = t.spec
    out = ["{%- set ns.text = message.content" + ("|trim" if spec.trim else "") + " -%}"]
    if role == "user":
        first = ["{%- set ns.first_user = false -%}"]
        if s.system_placement != "turn":
            first.append("{%- if ns.fold is not none -%}{%- set ns.text = ns.fold ~ " + _lit(s.system_separator)
                         + " ~ ns.text -%}{%- endif -%}")
        if s.tools is not None and s.tools.placement == "first_user":
            first.append("{%- if ns.tools -%}{%- set ns.text = ns.tools ~ ns.text -%}{%- endif -%}")
        out.append("{%- if ns.first_user -%}" + "".join(first) + "{%- endif -%}")
    merge = "true" if spec.merge_consecutive else "false"
    out.append("{%- set merged_in = " + merge + " and loop.previtem is defined and loop.previtem.role == role -%}"
               "{%- set merged_on = " + merge + " and loop.nextitem is defined and loop.nextitem.role == role -%}")
    body = _fill(spec.content, content="ns.text", name="message.name or ''")
    out.append("{{- ('' if merged_in else " + _lit(spec.open) + ") ~ " + body + " ~ ('' if merged_on else "
               + _lit(spec.close) + ") -}}")
    return out


def json_to_jinja(t: JSONTemplate) -> str:
    """The Jinja chat template equivalent to ``t`` (for HF's ``apply_chat_template``)."""
    s = t.spec
    lines = ["{#- sftkit: generated from the JSON chat template " + json.dumps(s.name) + " -#}",
             "{%- set ns = namespace(start=0, has_sys=false, sys='', base=none, fold=none, first_user=true, "
             "tools=none, items='', text='', body='', reply='', calls='', kw='') -%}",
             "{%- if messages and messages[0].role == 'system' -%}{%- set ns.start = 1 -%}"
             "{%- set ns.has_sys = true -%}{%- set ns.sys = messages[0].content -%}{%- endif -%}",
             *_tools_block(t)]
    if s.bos:
        lines.append("{{- " + _lit(s.bos) + " -}}")
    lines += _system_block(t)
    lines.append("{%- for message in messages[ns.start:] -%}{%- set role = message.role -%}")
    lines.append("{%- if role == 'assistant' -%}")
    lines += _assistant_block(t)
    for role in ("system", "user", "tool"):
        spec = s.turns.get(role)  # type: ignore[call-overload]
        if spec is None or (role == "system" and s.system_placement != "turn"):
            continue
        lines.append("{%- elif role == " + _lit(role) + " -%}")
        lines += _turn_block(t, role, spec)
    lines.append("{%- else -%}" + _raise(f"template {s.name!r} has no turn for this role (or only one leading "
                                          "system message)") + "{%- endif -%}{%- endfor -%}")
    if s.turns["assistant"].open:
        lines.append("{%- if add_generation_prompt -%}{{- " + _lit(s.turns["assistant"].open) + " -}}{%- endif -%}")
    return "\n".join(lines)


@dataclass(slots=True)
class JinjaCheck:
    """Which probe conversations render identically through both templates."""

    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the JSON template itself cannot render them

    @property
    def basic_ok(self) -> bool:
        return not any(name.startswith("chat") for name in self.failed)


def _probes() -> dict[str, tuple[Conversation, bool]]:
    c = Conversation.from_messages
    call = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function",
              "function": {"name": "get_weather", "description": "Weather forecast", "parameters": params}}]
    return {
        "chat: one user turn": (c([{"role": "user", "content": "Hello there"}]), True),
        "chat: system + reply": (c([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                    {"role": "assistant", "content": "4"}]), False),
        "chat: multi-turn": (c([{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello! "},
                                {"role": "user", "content": "Bye"}]), True),
        "chat: multi-turn with system, trained": (c([{"role": "system", "content": "S"},
                                                     {"role": "user", "content": "a"},
                                                     {"role": "assistant", "content": "b"},
                                                     {"role": "user", "content": "c"},
                                                     {"role": "assistant", "content": "d"}]), False),
        "reasoning": (c([{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a", "reasoning": "think"}]), False),
        "tool calls": (c([{"role": "user", "content": "Weather?"},
                          {"role": "assistant", "content": "", "tool_calls": [call]},
                          {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "warm"}],
                         tools=tools), True),
    }


def verify(t: JSONTemplate, jinja: str, tokenizer: object) -> JinjaCheck:
    """Render every probe with the JSON template and with ``jinja`` through the
    tokenizer's ``apply_chat_template``; record which agree exactly."""
    import copy


    tok = copy.copy(tokenizer)  # shallow: the caller's tokenizer keeps its template
    tok.chat_template = jinja  # type: ignore[attr-defined]
    out = JinjaCheck()
    for name, (conv, gen) in _probes().items():
        try:
            want = "".join(seg.text for seg in t.segments(conv, add_generation_prompt=gen))
        except ValueError:
            out.skipped.append(name)
            continue
        try:
            got = tok.apply_chat_template(_to_hf(conv, len(conv.messages)), tools=conv.tools, tokenize=False,  # type: ignore[attr-defined]
                                          add_generation_prompt=gen)
        except Exception:  # noqa: BLE001 - a Jinja error is a failed probe, not a crash
            got = None
        (out.passed if got == want else out.failed).append(name)
    return out
