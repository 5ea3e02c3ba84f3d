"""Chat with a run or a model, with its base model answering the same prompt beside it.

Both sides go through ``sftkit.infer.engine.Engine`` (what ``sft chat`` and ``sft serve`` use),
loaded by ``sftkit.evaluate.runner.load_sides``: for a LoRA run the base is the same loaded
weights with the adapter switched off, so the comparison costs no second model. The two
answers stream token by token, interleaved, as NDJSON events:

    {"side": "model", "delta": "..."}            text as it is generated
    {"side": "model", "done": true, ...}         finish reason, token counts, seconds
    {"event": "end"}
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftkit.console import heavy
from sftkit.console.errors import bad_request
from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import ModelNotFound, TemplateError
from sftkit.core.rundir import RunDir
from sftkit.hub.models import resolve

NO_BASELINE = "none"


def default_baseline(ref: str) -> str | None:
    """What "the base model" of ``ref`` is: None = a LoRA run's base (adapter off), the
    configured base of a full fine-tuning run, the ``base_model`` an exported folder's model
    card names (when that model is here), else "none"."""

    resolved = resolve(ref)
    if resolved.adapter is not None:
        return None
    if resolved.run_dir is not None:
        model = RunDir(resolved.run_dir).raw_config().get("model")
        return (model.get("name_or_path") if isinstance(model, dict) else None) or NO_BASELINE
    card = Path(ref) / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines()[:20]:
            if line.startswith("base_model:"):
                base = line.split(":", 1)[1].strip()
                try:
                    resolve(base)
                except ModelNotFound:
                    return NO_BASELINE
                return base
    return NO_BASELINE


class ChatModels:
    """The model pair loaded last (one pair at a time keeps memory bounded); one forward
    step at a time across all chats, since the models are shared."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device  # where chat models load (``sft console --device``; sftkit.hub.device)
        self._key: tuple[str, str | None] | None = None
        self._sides: list[Any] = []
        self._load_lock = threading.Lock()
        self.step_lock = threading.Lock()

    def sides(self, model_ref: str, baseline: str) -> list[Any]:
        """``baseline``: "auto" (see ``default_baseline``), "none", or a model reference."""
        heavy.ensure()
        from sftkit.evaluate.runner import load_sides

        with self._load_lock:
            try:
                base_ref = default_baseline(model_ref) if baseline == "auto" else baseline
                key = (model_ref, base_ref)
                if key != self._key:
                    self._sides, self._key = [], None
                    gc.collect()  # the previous pair goes before the next one loads
                    with self.step_lock:
                        self._sides = load_sides(model_ref, base_ref, device=self.device)
                    self._key = key
            except (ModelNotFound, TemplateError, OSError, ValueError) as e:
                raise bad_request(f"model: cannot load {model_ref!r}: {e}", "model") from None
            return list(self._sides)


def conversation(system: str | None, history: list[dict[str, str]], prompt: str, side: str) -> Any:
    """The messages one side sees: its own earlier answers, not the other side's."""

    msgs = [Message("system", system)] if system else []
    for turn in history:
        msgs.append(Message("user", turn.get("user", "")))
        msgs.append(Message("assistant", turn.get(side) or ""))
    msgs.append(Message("user", prompt))
    return Conversation(messages=msgs)


def check_lengths(sides: list[Any], prompts: list[str], max_new_tokens: int) -> None:
    from sftkit.infer.served_model import context_length

    for side, prompt in zip(sides, prompts, strict=True):
        n = len(side.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        limit = context_length(side.engine)
        if n + max_new_tokens > limit:
            raise bad_request(f"the conversation is {n} tokens; with max_new_tokens {max_new_tokens} it exceeds "
                              f"the {side.name} model's context of {limit} tokens (reset the chat or ask for fewer "
                              "tokens)", "history")


def side_by_side(models: ChatModels, sides: list[Any], prompts: list[str], params: Any) -> Iterator[str]:
    """Interleave the sides' token streams (NDJSON lines)."""
    streams = []
    for side, prompt in zip(sides, prompts, strict=True):
        streams.append((side, side.engine.stream(prompt, params), time.perf_counter()))
    active = list(streams)
    while active:
        for item in list(active):
            side, stream, t0 = item
            try:
                with models.step_lock, side.mode():
                    delta = next(stream)
            except StopIteration:
                delta = None
            except Exception as e:  # noqa: BLE001 - the page shows it; the server keeps serving
                yield _line({"side": side.name, "error": f"{type(e).__name__}: {e}"})
                active.remove(item)
                continue
            if delta is None:
                active.remove(item)
                r = stream.result
                yield _line({"side": side.name, "done": True, "finish_reason": r.finish_reason if r else None,
                             "completion_tokens": r.completion_tokens if r else 0,
                             "prompt_tokens": r.prompt_tokens if r else 0,
                             "seconds": round(time.perf_counter() - t0, 3), "ref": side.ref})
                continue
            yield _line({"side": side.name, "delta": delta})
    yield _line({"event": "end"})


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"
