"""``sft generate``: answer every prompt of a data file, resumably.

Prompt-only rows (a conversation ending on a user turn, an alpaca row without
``output``) are accepted for JSON/JSONL input, although the training loader
rejects them (see ``load_prompts``). The prompt of a row is its conversation without the final assistant reply (the
reply, when the conversation ends with one, is kept as ``reference``); ``prompt``
in the output is the exact text the model saw (template applied). Output is JSON Lines, one
row per input row::

    {"source": "train.jsonl:12", "input_sha256": "<digest of the input row>", "prompt": "<rendered prompt text>",
     "messages": [...], "output": "...", "reference": "...", "finish_reason": "stop"}

With ``as_training_data`` (``sft generate --as-training-data``) each row is SFT training data as
it stands, in the ``messages`` layout: the prompt's messages followed by the generated answer as
the assistant turn (a teacher's answers become a student's training file in one step)::

    {"source": "prompts.jsonl:12", "input_sha256": "...", "messages": [..., {"role": "assistant",
     "content": "<output>"}], "output": "...", "reference": "...", "finish_reason": "stop"}

``sft train`` reads such a file directly (extra keys are ignored); answers cut off at
``max_new_tokens`` (``finish_reason: length``) are counted so they can be dropped or regenerated.

Beside it, ``OUT.meta.json`` says that OUT is ``sft generate``'s, which data file it
answers (name, sha256, rows) and what wrote the answers (``producer``: the model's weights, its
chat template and the decoding settings). A sidecar rather than a header row, so that OUT stays
plain JSON Lines with one answer per line, which pandas, jq or any JSONL reader take
as it is.

Resume is keyed on content, not on file name and line number: ``input_sha256`` is the
digest of the input row (its messages, tools and reference). Running again

- keeps every answer whose input row is still in the data (identical rows are matched
  one for one), with ``source`` updated if the row moved;
- answers the rows without an answer: new ones, edited ones, ones an interruption lost;
- drops the answers whose input row is gone or was edited (they answer a prompt the
  data no longer holds);
- refuses (nothing changed) an OUT of which no row matches the data: it answers
  another input;
- refuses (nothing changed) to add answers from another model, template or decoding
  setting to an OUT written with different ones (its ``producer``): one file, one producer.

Only a file that is recognisably ``sft generate``'s is resumed: ``OUT.meta.json`` beside
it and every complete line an answer row; a torn last line (a crash mid-write) is the
one thing cut. Anything else (another program's file, the data file itself, a file
beside OUT that would be overwritten) is refused and left byte for byte unchanged
(``open_answers``). Rows are appended and flushed one batch at a time, so an
interruption loses at most one batch; changes to earlier rows (dropping, re-labelling,
cutting a torn line) write a temporary file and rename it over OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit import __version__
from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import RefusedPath
from sftkit.core.safepaths import same_file, write_text_atomic
from sftkit.data import LoadResult, Reject, load_file
from sftkit.hub.models import resolve
from sftkit.infer.engine import Engine, GenParams

FORMAT = "sftkit-answers"  # OUT.meta.json's "format": what marks an answers file as sft generate's
VERSION = 1
_ROW_START = b'{"source": '  # how every answer row begins (json.dumps of _row): a torn last line must too


@dataclass(slots=True)
class GenerateSummary:
    total: int  # rows in the input file
    generated: int  # answered in this run
    skipped: int  # already answered in the output (resume)
    dropped: int = 0  # answers removed from the output: their input row was edited or is gone
    cut_off: int = 0  # answers of this run that stopped at max_new_tokens (finish_reason "length")
    rejects: list[Reject] = field(default_factory=list)  # unusable input rows (with reasons)
    out: Path | None = None


@dataclass(slots=True)
class AnswersFile:
    """An existing (or absent) OUT, checked to be ``sft generate``'s own."""

    path: Path
    rows: list[dict[str, Any]]  # its complete answer rows, in file order
    torn: bool = False  # the last line was cut mid-write
    meta: dict[str, Any] | None = None  # OUT.meta.json


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def rejects_path(out: Path) -> Path:
    return out.with_name(out.name + ".rejects.jsonl")


def source_key(data: Path, conv: Conversation) -> str:
    """``file.jsonl:LINE`` from the loader's ``path:line`` (the path part may differ between runs)."""
    line = (conv.source or "").rsplit(":", 1)[-1]
    return f"{data.name}:{line}"


def row_digest(conv: Conversation) -> str:
    """sha256 of the input row as loaded (messages, tools, reference, label): the resume key."""
    body = conv.to_dict() | ({"label": conv.label} if conv.label is not None else {})
    canon = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _quick_digest(path: Path, span: int = 1 << 20) -> str:
    """size + sha256 of a file's first and last MiB: tells retrained weights apart without reading GBs."""
    h, size = hashlib.sha256(), path.stat().st_size
    with path.open("rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            h.update(f.read(span))
    return f"{size}:{h.hexdigest()[:16]}"


_WEIGHTS = ("*.safetensors", "*.bin", "*.gguf", "config.json", "adapter_config.json")


def producer(ref: str, engine: Engine, params: GenParams) -> dict[str, Any]:
    """What writes the answers: the weights (a quick digest of every weight file the reference loads,
    base, merged adapters and adapter), the chat template and the decoding settings (for greedy decoding
    only the length and stop strings matter)."""
    resolved = resolve(ref)
    folders = [resolved.path, *resolved.merged, *([resolved.adapter] if resolved.adapter else [])]
    h = hashlib.sha256()
    for folder in folders:
        files = [folder] if folder.is_file() else sorted({f for g in _WEIGHTS for f in folder.glob(g) if f.is_file()})
        for f in files:
            h.update(f"{f.name}={_quick_digest(f)};".encode())
    decoding: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "stop": list(params.stop)}
    if not params.greedy:
        decoding |= {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
                     "repetition_penalty": params.repetition_penalty, "seed": params.seed}
    elif params.repetition_penalty != 1.0:
        decoding["repetition_penalty"] = params.repetition_penalty
    template = getattr(getattr(engine.renderer, "template", None), "name", None)
    return {"model": ref, "weights": h.hexdigest()[:32], "template": template, "decoding": decoding}


def _another_producer(out: Path, was: dict[str, Any], now: dict[str, Any]) -> RefusedPath:
    changed = [f"{k}: {was.get(k)!r} then, {now.get(k)!r} now" for k in ("weights", "template", "decoding")
               if was.get(k) != now.get(k)]
    return RefusedPath(f"--out {out} holds answers of another producer ({'; '.join(changed)}; written by "
                       f"{was.get('model')!r}); answers of two models or settings cannot share a file: choose "
                       f"another --out, or delete it and {meta_path(out).name} to answer everything again")


# -- recognising OUT (and the files beside it) as sft generate's own ------------------


def open_answers(data: Path, out: Path) -> AnswersFile:
    """OUT's answer rows, after checking that OUT, ``OUT.meta.json`` and
    ``OUT.rejects.jsonl`` are absent or ``sft generate``'s own and none is the data
    file; otherwise ``RefusedPath`` and nothing is touched."""
    for path in (out, meta_path(out), rejects_path(out)):
        if same_file(path, data):
            what = "" if path == out else f" (its companion {path.name} would overwrite it)"
            raise RefusedPath(f"--out {out} would write over the data file {data}{what}; choose another --out")
    meta = _read_meta(out)
    _check_rejects_file(rejects_path(out))
    if not out.exists():
        return AnswersFile(out, [], meta=meta)
    if not out.is_file():
        raise RefusedPath(f"--out {out} is not a regular file (a folder?); give the answers file's path")
    raw = out.read_bytes()
    if raw and meta is None:
        raise RefusedPath(f"--out {out} exists and is not an answers file of sft generate (no "
                          f"{meta_path(out).name} beside it); it was left unchanged: choose another --out, or "
                          "delete it yourself to start over")
    rows, torn = _parse_rows(out, raw)
    return AnswersFile(out, rows, torn, meta)


def _read_meta(out: Path) -> dict[str, Any] | None:
    path = meta_path(out)
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RefusedPath(f"{path} exists and is not sft generate's record of an answers file; it was left "
                          "unchanged: choose another --out")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise RefusedPath(f"{path}: answers file format version {meta.get('version')!r} is not one this sftkit "
                          f"({__version__}) writes; choose another --out or upgrade sftkit")
    return meta


def _check_rejects_file(path: Path) -> None:
    """``OUT.rejects.jsonl`` is rewritten on every run: only if it is a rejects file."""
    if not path.exists() and not path.is_symlink():
        return
    ok = path.is_file()
    if ok:
        for line in path.read_bytes().splitlines():
            try:
                row = json.loads(line) if line.strip() else {"reason": ""}
            except ValueError:
                row = None
            if not (isinstance(row, dict) and "reason" in row):
                ok = False
                break
    if not ok:
        raise RefusedPath(f"{path} exists and is not a rejects file of sft generate; it was left unchanged: "
                          "choose another --out")


def _parse_rows(out: Path, raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """Every complete line must be an answer row; a last line without its newline is
    a torn write, accepted only if it begins like an answer row."""
    end = raw.rfind(b"\n") + 1
    tail = raw[end:]
    if tail and not (tail.startswith(_ROW_START) or _ROW_START.startswith(tail)):
        raise RefusedPath(f"--out {out}: its last line is not an answer row of sft generate; the file was left "
                          "unchanged: choose another --out")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(raw[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("source"), str)
                and isinstance(row.get("input_sha256"), str) and "output" in row):
            raise RefusedPath(f"{out}:{number}: not an answer row of sft generate (rows carry source, "
                              "input_sha256 and output); the file was left unchanged: fix or delete that line, "
                              "or choose another --out")
        rows.append(row)
    return rows, bool(tail)


# -- matching rows by content ---------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    kept: list[dict[str, Any]]  # existing answers still valid, in data order, sources updated
    todo: list[tuple[str, str, Conversation]]  # (source, digest, conversation) to answer
    dropped: int  # existing answers whose input row is gone or changed


def _match(rows: list[dict[str, Any]], items: list[tuple[str, str, Conversation]]) -> _Plan:
    pool: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        pool.setdefault(row["input_sha256"], []).append(row)
    kept: list[dict[str, Any]] = []
    todo: list[tuple[str, str, Conversation]] = []
    for key, digest, conv in items:
        same = pool.get(digest)
        if same:  # identical rows are matched one for one, in order
            kept.append(same.pop(0) | {"source": key})
        else:
            todo.append((key, digest, conv))
    return _Plan(kept, todo, sum(len(v) for v in pool.values()))


def _another_input(answers: AnswersFile, data: Path) -> RefusedPath:
    was = (answers.meta or {}).get("data") or {}
    note = f" (it was written for {was.get('name')}, sha256 {str(was.get('sha256'))[:12]}...)" if was else ""
    return RefusedPath(f"--out {answers.path} answers another input: none of its {len(answers.rows)} rows matches a "
                       f"row of {data}{note}; it was left unchanged: choose another --out, or delete it and "
                       f"{meta_path(answers.path).name} to start over")


def _settle(answers: AnswersFile, data: Path, plan: _Plan, total: int, training: bool,
            made_by: dict[str, Any] | None) -> None:
    """Record what OUT answers and what answers it, then make its existing rows exactly ``plan.kept``."""
    out = answers.path
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "answers": out.name, "generator": f"sftkit {__version__}",
            "data": {"name": data.name, "sha256": file_sha256(data), "rows": total}, "as_training_data": training}
    if made_by is None and plan.kept:  # the caller did not say: keep what the earlier run recorded
        made_by = (answers.meta or {}).get("producer")
    if made_by is not None:
        meta["producer"] = made_by
    write_text_atomic(meta_path(out), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    if answers.torn or plan.kept != answers.rows:
        write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in plan.kept))


def split_reply(conv: Conversation) -> tuple[list[Message], str | None]:
    """The prompt messages and the reference: a final assistant turn is the reply;
    a conversation ending on another role is all prompt (no reference)."""
    msgs = list(conv.messages)
    if msgs and msgs[-1].role == "assistant":
        return msgs[:-1], msgs[-1].content
    return msgs, None


def _prompt_conv(conv: Conversation) -> Conversation:
    return Conversation(messages=split_reply(conv)[0], tools=conv.tools, source=conv.source)


_PLACEHOLDER = "(sftkit: reply to generate)"
_TURN_KEYS = ("messages", "conversations", "conversation", "turns", "dialog")


def _with_placeholder(row: object) -> dict[str, object] | None:
    """``row`` with a placeholder reply appended, so that the loader (which needs
    training rows to end on a reply) validates a prompt-only row like any other;
    None when the row has no recognisable prompt shape."""
    if not isinstance(row, dict):
        return None
    row = dict(row)
    for key in _TURN_KEYS:
        turns = row.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
            sharegpt = "from" in turns[-1]
            reply = ({"from": "gpt", "value": _PLACEHOLDER} if sharegpt
                     else {"role": "assistant", "content": _PLACEHOLDER})
            row[key] = [*turns, reply]
            return row
    if "instruction" in row and not row.get("output"):
        row["output"] = _PLACEHOLDER
        return row
    return None


def load_prompts(data: Path, format: str | None = None) -> LoadResult:
    """``load_file``, plus prompt-only rows (no final reply), which the training
    loader rejects: they are re-checked with a placeholder reply that is then
    removed. Rows that still fail keep their original reject reason."""
    res = load_file(data, format=format)
    retry: dict[int, Reject] = {}
    patched: list[str] = []
    for rej in res.rejects:
        try:
            row = _with_placeholder(json.loads(rej.raw)) if isinstance(rej.raw, str) else None
        except json.JSONDecodeError:
            row = None
        if row is not None:
            retry[len(patched) + 1] = rej
            patched.append(json.dumps(row, ensure_ascii=False))
    if not patched:
        return res
    with tempfile.TemporaryDirectory(prefix="sftkit-gen-") as tmp:
        path = Path(tmp) / "prompts.jsonl"
        path.write_text("\n".join(patched) + "\n", encoding="utf-8")
        fmt = format or (res.format if res.format != "unknown" else None)
        again = load_file(path, format=fmt)
    recovered: set[int] = set()
    for conv in again.conversations:
        line = int((conv.source or ":0").rsplit(":", 1)[-1])
        if conv.messages and conv.messages[-1].content == _PLACEHOLDER:
            conv.messages.pop()
            orig = retry[line]
            conv.source = f"{data}:{orig.line}"
            res.conversations.append(conv)
            recovered.add(line)
    res.rejects = [r for i, r in retry.items() if i not in recovered] + [
        r for r in res.rejects if r not in retry.values()]
    res.conversations.sort(key=lambda c: int((c.source or ":0").rsplit(":", 1)[-1]))
    res.rejects.sort(key=lambda r: r.line)
    return res


def _usable(conv: Conversation) -> str | None:
    """Why a loaded conversation cannot be a prompt (None when it can)."""
    if conv.is_text:
        return "plain-text row: there is no conversation to answer"
    msgs = split_reply(conv)[0]
    if not msgs or all(m.role == "system" for m in msgs):
        return "no user turn before the reply: nothing to answer"
    return None


def run_generate(
    engine: Engine,
    data: Path,
    out: Path,
    params: GenParams,
    format: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    answers: AnswersFile | None = None,
    as_training_data: bool = False,
    made_by: dict[str, Any] | None = None,
) -> GenerateSummary:
    """Generate the missing rows of ``out`` for ``data`` (see the module docstring).
    ``answers``: ``open_answers(data, out)`` when the caller already checked OUT.
    ``on_total(n)`` is called once with the number of rows to generate,
    ``on_progress(done, n)`` after each batch. ``made_by``: ``producer(...)`` of this run; an OUT whose
    recorded producer differs is refused before anything changes."""
    answers = answers or open_answers(data, out)
    was_made_by = (answers.meta or {}).get("producer")
    if answers.rows and made_by is not None and was_made_by is not None and was_made_by != made_by:
        raise _another_producer(out, was_made_by, made_by)
    was = bool((answers.meta or {}).get("as_training_data"))
    if answers.rows and was != as_training_data:
        raise RefusedPath(f"--out {out} holds answers written {'with' if was else 'without'} --as-training-data; "
                          f"rows of both kinds cannot share a file: choose another --out")
    res = load_prompts(data, format=format)
    rejects = list(res.rejects)
    items: list[tuple[str, str, Conversation]] = []
    for conv in res.conversations:
        key = source_key(data, conv)
        why = _usable(conv)
        if why is not None:
            line = int(key.rsplit(":", 1)[-1]) if key.rsplit(":", 1)[-1].isdigit() else 0
            rejects.append(Reject(str(data), line, why, json.dumps(conv.to_dict(), ensure_ascii=False)))
            continue
        items.append((key, row_digest(conv), conv))
    plan = _match(answers.rows, items)
    if answers.rows and not plan.kept:
        raise _another_input(answers, data)
    _settle(answers, data, plan, res.total, as_training_data, made_by)
    if on_total:
        on_total(len(plan.todo))
    done, cut = _answer(engine, plan.todo, out, params, on_progress, as_training_data)
    return GenerateSummary(total=res.total, generated=done, skipped=len(plan.kept), dropped=plan.dropped,
                           rejects=rejects, out=out, cut_off=cut)


def _answer(engine: Engine, todo: list[tuple[str, str, Conversation]], out: Path, params: GenParams,
            on_progress: Callable[[int, int], None] | None, training: bool = False) -> tuple[int, int]:
    """Append the answers to ``todo``, flushed to disk one batch at a time; (answered, cut off)."""
    done = cut = 0
    step = max(1, engine.batch_size)
    with out.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            prompts = [engine.prompt_for(_prompt_conv(c)) for _, _, c in chunk]
            results = engine.generate(prompts, params)
            for (key, digest, conv), prompt, r in zip(chunk, prompts, results, strict=True):
                row = _row(key, digest, conv, prompt, r.text, r.finish_reason, training)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                cut += r.finish_reason == "length"
            f.flush()
            os.fsync(f.fileno())
            done += len(chunk)
            if on_progress:
                on_progress(done, len(todo))
    return done, cut


def _row(key: str, digest: str, conv: Conversation, prompt: str, output: str, finish: str,
         training: bool = False) -> dict[str, Any]:
    msgs, reference = split_reply(conv)
    turns = [m.to_dict() for m in msgs]
    if training:  # the messages layout, the answer as the assistant turn: SFT data as it stands
        row: dict[str, Any] = {"source": key, "input_sha256": digest,
                               "messages": [*turns, {"role": "assistant", "content": output}], "output": output}
        if conv.tools:
            row["tools"] = conv.tools
    else:
        row = {"source": key, "input_sha256": digest, "prompt": prompt, "messages": turns, "output": output}
    if reference is not None:
        row["reference"] = reference
    row["finish_reason"] = finish
    return row
