"""Find a chat template by reference: the tokenizer's own, a shipped name, or a file."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from sftkit.core.errors import TemplateError
from sftkit.core.textfile import read_text
from sftkit.templates.base import ChatTemplate
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.json_template import JSONTemplate

SHIPPED_DIR = Path(__file__).parent / "shipped"
AUTO = "auto"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def list_templates() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped JSON template, sorted by name."""
    out = []
    for name in shipped_names():
        raw = json.loads((SHIPPED_DIR / f"{name}.json").read_text(encoding="utf-8"))
        out.append((name, str(raw.get("description", ""))))
    return out


@cache
def _shipped(name: str) -> JSONTemplate:
    # Templates are immutable, so one parsed instance per name is shared.
    return JSONTemplate.from_file(SHIPPED_DIR / f"{name}.json")


def is_template_ref(ref: str) -> bool:
    """Whether ``ref`` names a template (as opposed to, say, a model)."""
    return ref in (AUTO, *shipped_names()) or ref.endswith((".json", ".jinja", ".j2"))


def load_template(ref: str | None, tokenizer: Any = None) -> ChatTemplate:
    """``None``/``"auto"``: the tokenizer's own template; a shipped name
    (``qwen2_chatml``); or a path to a ``.json`` template or a ``.jinja`` file."""
    if ref is None or ref == AUTO:
        if tokenizer is None:
            raise TemplateError("template 'auto' uses the model's own chat template, but no tokenizer was given")
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat template; set `template:` to one of the shipped templates "
                f"({', '.join(shipped_names())}) or to a .json/.jinja file"
            )
        return HFChatTemplate(tokenizer)
    if ref in shipped_names():
        return _shipped(ref)
    path = Path(ref).expanduser()
    if ref.endswith(".json"):
        if not path.is_file():
            raise TemplateError(f"template file {ref} does not exist; check the `template:` path")
        return JSONTemplate.from_file(path)
    if ref.endswith((".jinja", ".j2")):
        return _jinja(path, tokenizer)
    raise TemplateError(
        f"unknown template {ref!r}; use 'auto' (the model's own), one of {', '.join(shipped_names())}, "
        "or a path ending in .json or .jinja"
    )


def _jinja(path: Path, tokenizer: Any) -> HFChatTemplate:
    if not path.is_file():
        raise TemplateError(f"template file {path} does not exist; check the `template:` path")
    if tokenizer is None:
        raise TemplateError(f"{path}: a Jinja template is rendered by the model's tokenizer, but none was given")
    # A shallow copy: the caller's tokenizer keeps its own template, the vocabulary is shared.
    tok = copy.copy(tokenizer)
    tok.chat_template = read_text(path, "chat template", TemplateError)
    return HFChatTemplate(tok, name=path.name, where=str(path))
