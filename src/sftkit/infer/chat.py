"""``sft chat``: multi-turn chat in the terminal, streaming, through the shared engine."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console

from sftkit.core.conversation import Conversation, Message
from sftkit.infer.engine import Engine, GenParams

_HELP = "commands: /reset clears the history, /exit (or Ctrl-D) quits"


def answer(engine: Engine, history: list[Message], params: GenParams, out: TextIO | None = None) -> str:
    """Stream one reply to ``out`` (default: the current stdout) and return it."""
    out = out or sys.stdout
    prompt = engine.prompt_for(Conversation(messages=list(history)))
    parts = []
    for delta in engine.stream(prompt, params):
        parts.append(delta)
        out.write(delta)
        out.flush()
    out.write("\n")
    return "".join(parts)


def run_chat(ref: str, prompt: str | None = None, system: str | None = None, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 0.9, device: str = "auto") -> None:
    console = Console(stderr=True)
    with console.status(f"loading {ref} ..."):
        engine = Engine.from_ref(ref, device=device)
    params = GenParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    base: list[Message] = [Message("system", system)] if system else []
    if prompt is not None:
        answer(engine, [*base, Message("user", prompt)], params)
        return
    where = engine.device_info.describe() if engine.device_info else "cpu"
    console.print(f"[dim]{ref} on {where} — {_HELP}[/]")
    history = list(base)
    while True:
        try:
            text = console.input("[bold green]you> [/]")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text.strip() in {"/exit", "/quit"}:
            return
        if text.strip() == "/reset":
            history = list(base)
            console.print("[dim]history cleared[/]")
            continue
        if not text.strip():
            continue
        history.append(Message("user", text))
        console.print("[bold blue]model>[/] ", end="")
        try:
            reply = answer(engine, history, params)
        except KeyboardInterrupt:
            console.print("\n[dim](interrupted)[/]")
            history.pop()
            continue
        history.append(Message("assistant", reply))
