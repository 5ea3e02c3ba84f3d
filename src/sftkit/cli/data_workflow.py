"""``sft data extract | synth | sample | review | agree | augment``: documents to reviewed training data.

The chain the guide describes for a domain assistant: extract text from filings, have a teacher
draft grounded question/answer pairs, spot-check a sample by hand (two reviewers for agreement),
fold the verdicts back, and add typo-noisy copies of the prompts. Like the other ``sft data``
commands: ``--json`` prints one JSON object as the last stdout line; exit 0 ok, 1 problems found
(skipped files, chunks without a pair, unreviewed rows, kappa under --min-kappa), 2 fatal (raised
as ``SftkitError``, printed by the boundary). No command writes over an input, nor over an
existing file without ``--force``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sftkit.core.errors import DataError
from sftkit.core.safepaths import check_output_file
from sftkit.data.agreement import agree
from sftkit.data.augment import augment
from sftkit.data.extract import extract
from sftkit.data.review import csv_path, fold, read_sheet, sample, write_sheet
from sftkit.data.rows import load_rows, record, write_records
from sftkit.data.synth import check_settings, load_chunks, synth
from sftkit.infer.remote import HttpTeacher, is_url

console = Console(highlight=False)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", help="Output file (default: beside the input).")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (the same seed gives the same result).")]
BUNDLED = "smollm2-135m-instruct"


def _finish(report: dict[str, Any], as_json: bool, code: int, lines: list[str] | None = None,
            table: Table | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, default=str) + "\n")
    else:
        if table is not None:
            console.print(table)
        for line in lines or []:
            console.print(escape(line), soft_wrap=True)
    raise typer.Exit(code)


def _table(title: str, cols: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(escape(str(x)) for x in r))
    return t


def _beside(src: str, suffix: str, given: str | None) -> Path:
    return Path(given) if given else Path(src).with_name(Path(src).stem + suffix)


def extract_cmd(
    paths: Annotated[list[str], typer.Argument(help="Documents (.txt .md .html .pdf) or folders of them.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Chunks file to write (JSONL).")],
    size: Annotated[int, typer.Option(help="Target chunk size in characters.")] = 400,
    overlap: Annotated[int, typer.Option(help="Characters of whole sentences repeated between chunks.")] = 50,
    min_chars: Annotated[int, typer.Option(help="Drop chunks shorter than this (a lone heading).")] = 10,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Documents -> clean, page-aware text chunks; every file is used or reported with a reason."""
    check_output_file(out, [p for p in paths if Path(p).is_file()], force)
    res = extract(paths, size, overlap, min_chars)
    if not res.chunks:
        why = "; ".join(f"{s['path']}: {s['reason']}" for s in res.skipped) or "no documents found"
        raise DataError(f"no text extracted from {' '.join(paths)} ({why})")
    write_records(res.chunks, out)
    report = {"out": out, **res.summary(), "per_file": res.files, "duplicate_chunks": res.duplicates}
    rows = [[f["path"], f["pages"], f["chunks"], len(f["removed_lines"])] for f in res.files]
    rows += [[s["path"], "-", "skipped", s["reason"]] for s in res.skipped]
    lines = [f"{len(res.chunks)} chunks ({report['chars']} characters) written to {out}; "
             f"{len(res.duplicates)} duplicate and {len(res.short)} short chunks dropped"]
    _finish(report, as_json, 1 if res.skipped else 0, lines,
            _table("Extracted", ["file", "pages", "chunks", "header/footer lines removed"], rows))


def synth_cmd(
    chunks: Annotated[str, typer.Argument(help="Chunks file from sft data extract.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Drafted pairs (JSONL, messages layout).")],
    teacher: Annotated[str, typer.Option(help="Model reference, run folder, or http(s)://HOST/v1 URL.")] = BUNDLED,
    teacher_model: Annotated[str | None, typer.Option(help="Model name at the URL (default: its first).")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the URL's API key.")] = (
        "OPENAI_API_KEY"),
    pairs: Annotated[int, typer.Option(help="Question/answer pairs to ask for per chunk.")] = 3,
    lang: Annotated[str, typer.Option(help="Prompt language: zh or en.")] = "zh",
    system: Annotated[str | None, typer.Option(help="System prompt to put on every drafted row.")] = None,
    min_support: Annotated[float, typer.Option(help="Share of the answer's wording the chunk must hold.")] = 0.3,
    max_new_tokens: Annotated[int, typer.Option(help="Longest teacher reply in tokens.")] = 512,
    batch: Annotated[int, typer.Option(help="Chunks per teacher call (and per write).", min=1)] = 8,
    rejects: Annotated[str | None, typer.Option(help="Rejected drafts (default: OUT.rejects.jsonl).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run: skip chunks already done.")] = False,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """A teacher drafts grounded Q&A pairs per chunk; ungrounded drafts go to the rejects file."""
    rej = _beside(out, ".rejects.jsonl", rejects)
    if resume and force:
        raise DataError("--resume continues the files --out names, --force replaces them: give one of them")
    check_settings(pairs, lang, min_support)
    check_output_file(out, [chunks], force or resume)
    check_output_file(rej, [chunks, out], force or resume, "--rejects")
    items = load_chunks(chunks)
    if is_url(teacher):  # an endpoint: no torch needed here
        t: Any = HttpTeacher(teacher, teacher_model, os.environ.get(api_key_env), max_new_tokens)
    else:
        from sftkit.infer.teacher import make_teacher

        t = make_teacher(teacher, max_new_tokens=max_new_tokens, batch_size=batch)
    res = synth(items, t, out, rej, pairs=pairs, lang=lang, batch=batch, resume=resume, system=system,
                min_support=min_support)
    report = {"out": out, "rejects": str(rej), "teacher": t.name, **res.summary()}
    lines = [f"{res.pairs} pairs from {res.drafted} of {res.chunks} chunks written to {out} "
             f"({res.resumed} done before); {res.rejected} drafts rejected -> {rej}"]
    lines += [f"no pair kept for {e['chunk']}: {e['reason']}" for e in res.empty[:20]]
    table = _table("Rejected drafts", ["reason", "drafts"], [[k, v] for k, v in res.reasons.most_common()])
    _finish(report, as_json, 1 if res.empty else 0, lines, table if res.reasons else None)


def sample_cmd(
    file: Annotated[str, typer.Argument(help="Data file to spot-check.")],
    per_thousand: Annotated[float, typer.Option(help="Rows per thousand to review (the guide: 50-100).")] = 50,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    any_rate: Annotated[bool, typer.Option(help="Allow a --per-thousand outside 50-100.")] = False,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Write a review sheet (JSONL + CSV for Excel) of a random sample, with an empty verdict column."""
    sheet = _beside(file, ".review.jsonl", out).with_suffix(".jsonl")
    check_output_file(sheet, [file], force)
    check_output_file(csv_path(sheet), [file], force)
    res = load_rows(file)
    rows = sample(res.conversations, per_thousand, seed, any_rate)
    jsonl, csv_file = write_sheet(rows, sheet)
    report = {"file": file, "rows": res.valid, "sampled": len(rows), "per_thousand": per_thousand, "seed": seed,
              "sheet": str(jsonl), "csv": str(csv_file), "unreadable_rows": res.rejected}
    lines = [f"{len(rows)} of {res.valid} rows on the sheet: {jsonl} and {csv_file}",
             "Fill in verdict (accept / reject / fix), reason and reviewer, then: sft data review "
             f"{csv_file}"]
    _finish(report, as_json, 0, lines)


def _data_of(sheet: list[tuple[int, dict[str, str]]], name: str) -> str:
    files = {r.get("source", "").rsplit(":", 1)[0] for _, r in sheet} - {""}
    if len(files) != 1:
        raise DataError(f"{name}: cannot tell the data file from the source column ({len(files)} files named); "
                        "pass --data FILE")
    return files.pop()


def review_cmd(
    sheet: Annotated[str, typer.Argument(help="Review sheet (.jsonl or .csv) with verdicts filled in.")],
    data: Annotated[str | None, typer.Option(help="The data file sampled (default: from the sheet).")] = None,
    out: OutOpt = None,
    quarantine: Annotated[str | None, typer.Option(help="Rejected rows (default: DATA.quarantine.jsonl).")] = None,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Fold verdicts back: rejected rows to the quarantine with the reason, fixes applied."""
    rows = read_sheet(sheet)
    data = data or _data_of(rows, sheet)
    out_p, q_p = _beside(data, ".reviewed.jsonl", out), _beside(data, ".quarantine.jsonl", quarantine)
    inputs = [data, sheet, csv_path(sheet), Path(sheet).with_suffix(".jsonl")]
    check_output_file(out_p, inputs, force)
    check_output_file(q_p, [*inputs, out_p], force, "--quarantine")
    res = load_rows(data)
    f = fold(rows, res.conversations, sheet)
    write_records(f.kept, out_p)
    write_records(f.quarantine, q_p)
    report = {"data": data, "out": str(out_p), "quarantine": str(q_p), **f.summary(res.valid),
              "unreadable_rows": res.rejected}
    lines = [f"{len(f.kept)} rows written to {out_p}; {len(f.quarantine)} quarantined in {q_p}",
             *f.notes[:20]]
    if f.unreviewed:
        lines.append(f"{len(f.unreviewed)} sheet rows have no verdict yet (kept unchanged)")
    if f.unknown:
        lines.append(f"{len(f.unknown)} sheet ids are not in {data} (changed since sampling?)")
    if res.rejected:
        lines.append(f"{res.rejected} rows of {data} are unreadable and not in the output (see sft data check)")
    counts = [[k, f.counts[k]] for k in ("accept", "fix", "reject")]
    rate = report["error_rate"]
    if rate is not None:
        counts.append(["error rate (fix+reject)", f"{rate:.1%} -> about {report['estimated_bad_rows']} rows"])
    _finish(report, as_json, 1 if f.unreviewed or f.unknown or res.rejected else 0, lines,
            _table("Review", ["verdict", "rows"], counts))


def agree_cmd(
    sheet_a: Annotated[str, typer.Argument(help="Sheet reviewed by one person.")],
    sheet_b: Annotated[str, typer.Argument(help="The same sheet reviewed by another.")],
    min_kappa: Annotated[float | None, typer.Option(help="Exit 1 when kappa is below this.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Annotator agreement: Cohen's kappa, percent agreement, confusion and per-label tables."""
    rep = agree(sheet_a, sheet_b)
    labels = list(rep["per_label"])
    conf = [[f"A: {la}", *(rep["confusion"][la][lb] for lb in labels)] for la in labels]
    kappa = "n/a" if rep["kappa"] is None else f"{rep['kappa']:.3f}"
    pct = "n/a" if rep["percent_agreement"] is None else f"{rep['percent_agreement']:.1%}"
    lines = [f"{rep['rows']} rows reviewed by both: kappa {kappa} ({rep['interpretation']}), agreement {pct}",
             *(f"{k}: a {v['a']}, b {v['b']}, both {v['both']}, specific agreement {v['agreement']:.1%}"
               for k, v in rep["per_label"].items()),
             f"reviewed by one side only: A {len(rep['only_a'])}, B {len(rep['only_b'])}"]
    low = min_kappa is not None and (rep["kappa"] is None or rep["kappa"] < min_kappa)
    table = _table("Confusion (rows: A, columns: B)", ["", *labels], conf) if labels else None
    _finish(rep, as_json, 1 if low else 0, lines, table)


def augment_cmd(
    file: Annotated[str, typer.Argument(help="Data file.")],
    typos: Annotated[float, typer.Option(help="Expected share of prompt characters edited.")] = 0.03,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    noisy_only: Annotated[bool, typer.Option(help="Write only the noisy copies, not the originals.")] = False,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Add copies of the rows with realistic typos in the user turns (replies unchanged)."""
    out_p = _beside(file, ".noisy.jsonl", out)
    check_output_file(out_p, [file], force)
    res = load_rows(file)
    copies, untouched = augment(res.conversations, typos, seed)
    originals = [] if noisy_only else [record(c) for c in res.conversations]
    n = write_records([*originals, *copies], out_p)
    report = {"file": file, "out": str(out_p), "rows": res.valid, "noisy": len(copies), "written": n,
              "untouched": untouched, "typos": typos, "seed": seed, "unreadable_rows": res.rejected}
    lines = [f"{len(copies)} noisy copies (+{len(originals)} originals) written to {out_p}"]
    if untouched:
        lines.append(f"{len(untouched)} rows have no editable prompt text (no copy)")
    _finish(report, as_json, 0, lines)


def register(app: typer.Typer) -> None:
    """Add the workflow commands to the ``sft data`` app."""
    app.command("extract")(extract_cmd)
    app.command("synth")(synth_cmd)
    app.command("sample")(sample_cmd)
    app.command("review")(review_cmd)
    app.command("agree")(agree_cmd)
    app.command("augment")(augment_cmd)
