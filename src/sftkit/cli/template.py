"""``sft template``: list, render, show and check chat templates.

Heavy modules (transformers) are imported inside commands; rendering text with
a JSON template needs no tokenizer at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sftkit.cli.boundary import command_group
from sftkit.core.conversation import Conversation
from sftkit.core.errors import UsageError
from sftkit.core.textfile import read_text
from sftkit.core.vocab import BUNDLED_ALIAS, MaskPolicy
from sftkit.data import load_file
from sftkit.hub.models import load_tokenizer, resolve
from sftkit.templates.check import check_template
from sftkit.templates.registry import is_template_ref, list_templates, load_template, shipped_names
from sftkit.templates.render import IGNORE, Renderer, trained_spans

if TYPE_CHECKING:
    from sftkit.templates.base import ChatTemplate, Segment

app = command_group("List, render, show and check chat templates.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SAMPLE_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "你好，今天天气怎么样？"},
        {"role": "assistant", "content": "晴天 ☀️"},
        {"role": "user", "content": "Thanks 🙏"},
        {"role": "assistant", "content": "You're welcome!"},
    ],
]



def _model(ref: str) -> tuple[Any, Path]:

    path = resolve(ref).path
    return load_tokenizer(path), path


def _template(ref: str | None, tokenizer: Any) -> ChatTemplate:

    return load_template(ref, tokenizer)


def _read_messages(path: Path) -> Conversation:
    try:
        raw = json.loads(read_text(path, "messages file", UsageError))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    msgs = raw.get("messages") if isinstance(raw, dict) else raw
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
        raise UsageError(f'{path}: expected a list of messages or {{"messages": [...]}}, each with a role')
    tools = raw.get("tools") if isinstance(raw, dict) else None
    return Conversation.from_messages(msgs, tools=tools, source=str(path))


def _read_rows(path: Path) -> list[Conversation]:
    return list(load_file(path).conversations)


@app.command("list")
def list_cmd() -> None:
    """List the shipped JSON templates."""

    table = Table("name", "description")
    for name, desc in list_templates():
        table.add_row(Text(name), Text(desc))  # Text: template strings look like rich markup
    out.print(table)
    out.print("Also: 'auto' (the model's own chat template) or a path to a .json / .jinja file.")


@app.command()
def render(
    template: Annotated[str, typer.Option(help="Shipped template name, .json/.jinja file, or a model.")],
    messages: Annotated[Path, typer.Option(help='JSON file: a list of messages or {"messages": [...]}.')],
    generation_prompt: Annotated[bool, typer.Option(help="End with the assistant generation prompt.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Also print {text, input_ids, labels} as the last line.")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Tokenizer for --json ids (default: the bundled model).")] = None,
) -> None:
    """Print a conversation as the template renders it."""
    conv = _read_messages(messages)
    tmpl, tok = _render_template(template, model)
    segs = tmpl.segments(conv, add_generation_prompt=generation_prompt)
    text = "".join(s.text for s in segs)
    typer.echo(text)
    if as_json:
        if tok is None:
            tok, _ = _model(model or BUNDLED_ALIAS)
        ids, labels = _ids_and_labels(tmpl, tok, segs)
        typer.echo(json.dumps({"text": text, "input_ids": ids, "labels": labels}, ensure_ascii=False))


def _ids_and_labels(tmpl: ChatTemplate, tok: Any, segs: list[Segment]) -> tuple[list[int], list[int]]:
    """Labels exactly as training assigns them (policy ``assistant``), for any segments,
    including a trailing generation prompt, which is never trained."""

    text = "".join(s.text for s in segs)
    enc = tok([text], add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"][0]), enc["offset_mapping"][0]
    spans = trained_spans(segs, MaskPolicy.assistant, [*tmpl.stop_strings, tok.eos_token or ""])
    inside = [any(a <= x < b for a, b in spans) and y > x for x, y in offsets]
    return ids, [i if keep else IGNORE for i, keep in zip(ids, inside, strict=True)]


def _render_template(ref: str, model: str | None) -> tuple[ChatTemplate, Any]:
    """The template, and a tokenizer if one was needed to build it."""

    if ref in shipped_names() or ref.endswith(".json"):
        return _template(ref, None), None  # text needs no tokenizer
    if is_template_ref(ref):  # 'auto' or a Jinja file: rendered by a tokenizer
        tok, _ = _model(model or BUNDLED_ALIAS)
        return _template(ref, tok), tok
    tok, _ = _model(ref)  # a model reference: its own chat template
    return _template(None, tok), (_model(model)[0] if model else tok)


@app.command()
def show(
    model: Annotated[str, typer.Option(help="Model (its tokenizer is used).")],
    data: Annotated[Path, typer.Option(help='Data file (JSONL/JSON of {"messages": ...} rows).')],
    row: Annotated[int, typer.Option(help="Row number, from 0.")] = 0,
    template: Annotated[str | None, typer.Option(help="Template (default: the model's own).")] = None,
) -> None:
    """Show one row rendered, trained tokens highlighted."""

    tok, _ = _model(model)
    convs = _read_rows(data)
    if not 0 <= row < len(convs):
        raise UsageError(f"{data}: row {row} is out of range (the file has {len(convs)} usable rows)")
    r = Renderer(_template(template, tok), tok).render(convs[row])
    offs = tok([r.text], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][0]
    shown = Text()
    done = 0  # byte-level tokens of one CJK character share its offsets: print each character once
    for (a, b), lab in zip(offs, r.labels, strict=False):
        if b > done:
            shown.append(r.text[max(a, done):b], style="bold green" if lab != IGNORE else "dim")
            done = b
    out.print(Text(f"{r.source or data} — {len(r.input_ids)} tokens, {r.n_trainable} trained (green)", style="bold"))
    out.print(shown)


@app.command()
def check(
    model: Annotated[str, typer.Option(help="Model (tokenizer and generation_config).")] = BUNDLED_ALIAS,
    template: Annotated[str | None, typer.Option(help="Template (default: the model's own).")] = None,
    data: Annotated[Path | None, typer.Option(help="Data file to check on (default: built-in samples).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (last line).")] = False,
) -> None:
    """Check that the template trains what inference sees; exit 1 on any failure."""

    tok, path = _model(model)
    tmpl = _template(template, tok)
    convs = _read_rows(data) if data else [Conversation.from_messages(m) for m in SAMPLE_CONVERSATIONS]
    report = check_template(tmpl, tok, convs, _generation_config(path))
    table = Table("check", "status", "message", title=Text(f"template {report.template!r} on {model}"))
    style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    for f in report.findings:
        table.add_row(Text(f.check), Text(f.status, style=style[f.status]), Text(f.message))
    (err if as_json else out).print(table)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    raise typer.Exit(0 if report.ok else 1)


def _generation_config(path: Path) -> Any:
    if not (path / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(path)
