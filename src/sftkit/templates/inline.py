"""Fields a tokenizer's Jinja template ignores, written into the text instead of dropped.

Many chat templates (SmolLM2's among them) render only ``content``: a CoT row's thinking
block, an assistant's tool calls or a row's declared tools would vanish from the training
text without a word, and the model would be trained on answers without their reasoning.
``probe`` renders one conversation per field with a marker in that field and records which
markers survive; ``lower`` rewrites a conversation so that every unsupported field is part
of a message's content, in the widely used tag conventions:

- reasoning: ``<think>\\n...\\n</think>\\n\\n`` before the reply (DeepSeek-R1, Qwen3);
- tool calls: ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`` after the reply;
- tool results, when the template has no tool role: a user turn ``<tool_response>...``;
- declared tools: a ``<tools>`` block of JSON schemas at the end of the system prompt (or at
  the start of the first user turn when there is none).

Training and inference both render through ``lower``, so the prompt a served model sees has
the same layout it was trained on. ``sft template check`` names what was written inline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import TemplateBlocked

_MARK = "sftkit-probe-7f3a"
_TOOL = {"type": "function", "function": {"name": f"{_MARK}fn", "description": "d", "parameters": {}}}

Render = Callable[[list[dict[str, Any]], Any], str]  # (messages, tools) -> text


@dataclass(frozen=True, slots=True)
class Support:
    """Which optional fields the template renders itself."""

    reasoning: bool = True
    tool_calls: bool = True
    tool_role: bool = True
    tools: bool = True

    def missing(self) -> list[str]:
        return [k for k in ("reasoning", "tool_calls", "tool_role", "tools") if not getattr(self, k)]


def _shows(render: Render, messages: list[dict[str, Any]], tools: Any = None) -> bool:
    try:
        return _MARK in render(messages, tools)
    except TemplateBlocked:
        raise  # the sandbox refused the template itself: that is not "this field is unsupported"
    except Exception:  # noqa: BLE001 - a template that raises on a field does not support it
        return False


def probe(render: Render) -> Support:
    user = {"role": "user", "content": "u"}
    call = {"type": "function", "function": {"name": f"{_MARK}fn", "arguments": {"x": 1}}}
    return Support(
        reasoning=_shows(render, [user, {"role": "assistant", "content": "a", "reasoning_content": _MARK}]),
        tool_calls=_shows(render, [user, {"role": "assistant", "content": "", "tool_calls": [call]}]),
        tool_role=_shows(render, [user, {"role": "assistant", "content": "", "tool_calls": [call]},
                                  {"role": "tool", "content": _MARK}, {"role": "assistant", "content": "a"}]),
        tools=_shows(render, [user, {"role": "assistant", "content": "a"}], [_TOOL]),
    )


def think_block(reasoning: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n"


def tool_call_block(call: dict[str, Any]) -> str:
    body = {"name": call.get("name"), "arguments": call.get("arguments", {})}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def tools_block(tools: list[dict[str, Any]]) -> str:
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return f"You may call these tools; reply with <tool_call> blocks:\n<tools>\n{lines}\n</tools>"


def _assistant(m: Message, support: Support) -> Message:
    content = m.content
    if m.reasoning and not support.reasoning:
        content = think_block(m.reasoning) + content
    calls = m.tool_calls
    if calls and not support.tool_calls:
        content = "\n".join([*([content] if content else []), *map(tool_call_block, calls)])
        calls = None
    return replace(m, content=content, reasoning=m.reasoning if support.reasoning else None, tool_calls=calls)


def needs_lowering(conv: Conversation, support: Support) -> bool:
    if conv.tools and not support.tools:
        return True
    for m in conv.messages:
        if (m.reasoning and not support.reasoning) or (m.tool_calls and not support.tool_calls):
            return True
        if m.role == "tool" and not support.tool_role:
            return True
    return False


def lower(conv: Conversation, support: Support) -> Conversation:
    """``conv`` with every field the template would drop written into message contents."""
    if conv.is_text or not needs_lowering(conv, support):
        return conv
    out: list[Message] = []
    for m in conv.messages:
        if m.role == "assistant":
            out.append(_assistant(m, support))
        elif m.role == "tool" and not support.tool_role:
            out.append(Message("user", f"<tool_response>\n{m.content}\n</tool_response>"))
        else:
            out.append(m)
    tools = conv.tools
    if tools and not support.tools:
        block = tools_block(tools)
        # into the system prompt, else the first user turn: message indices stay those of ``conv``
        # (and a template's default system prompt stays in place)
        at = next((i for i, m in enumerate(out) if m.role in ("system", "user")), None)
        if at is not None:
            first = out[at]
            out[at] = replace(first, content=f"{first.content}\n\n{block}" if first.role == "system" and first.content
                              else f"{block}\n\n{first.content}" if first.content else block)
        tools = None
    return replace(conv, messages=out, tools=tools)


def describe(missing: list[str]) -> str:
    words = {
        "reasoning": "reasoning as <think> blocks",
        "tool_calls": "tool calls as <tool_call> blocks",
        "tool_role": "tool results as <tool_response> user turns",
        "tools": "declared tools as a <tools> block in the prompt",
    }
    return ", ".join(words[k] for k in missing)


def answer_part(text: str) -> str:
    """A generated reply without its leading ``<think>`` block: what is scored against the
    reference answer (a reply cut off inside the block has no answer)."""
    s = text.lstrip()
    if not s.startswith("<think>"):
        return text
    end = s.find("</think>")
    return "" if end < 0 else s[end + len("</think>"):]
