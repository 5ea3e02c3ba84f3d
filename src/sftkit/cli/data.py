"""``sft data ...``: check, stats, dedup, lint, split, leak; and (``cli/data_workflow.py``) the
document workflow extract, synth, sample, review, agree, augment.

Every command prints rich tables, or with ``--json`` exactly one JSON object
(the last line of stdout). Exit codes: 0 ok, 1 rows rejected / problems found
(``check``, ``leak``), 2 fatal (unreadable file, unknown or mixed format).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sftkit.cli.boundary import command_group
from sftkit.cli.data_workflow import register
from sftkit.core.errors import DataError, UsageError
from sftkit.core.safepaths import check_output_file
from sftkit.data import LoadResult, load_file, write_rejects
from sftkit.data import stats as st
from sftkit.data.dedup import find_duplicates
from sftkit.data.io import write_jsonl
from sftkit.data.kinds import load_any
from sftkit.data.leak import find_leaks
from sftkit.data.lint import lint as run_lint
from sftkit.data.preference import PrefLoad
from sftkit.data.rows import load_rows
from sftkit.data.split import recommend_val_share
from sftkit.data.split import split as run_split
from sftkit.data.types import Reject

app = command_group("Check, inspect and prepare SFT data files.")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help="Row layout; default: detect.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")]
ThresholdOpt = Annotated[float, typer.Option(help="Near-duplicate Jaccard similarity (0-1).", min=0.0, max=1.0)]
MAX_SHOWN = 20



def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _load(path: str, fmt: str | None = None, **kw: Any) -> LoadResult:
    return load_file(path, fmt, **kw)


def _table(title: str, cols: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(str(x) for x in r))
    return t


def _rejects_table(rejects: list[Reject]) -> Table:
    rows = [[r.file, r.line, r.reason] for r in rejects[:MAX_SHOWN]]
    title = f"Rejected rows ({len(rejects)}{', first ' + str(MAX_SHOWN) if len(rejects) > MAX_SHOWN else ''})"
    return _table(title, ["file", "line", "reason"], rows)


# --- check ---------------------------------------------------------------------


def _check_one(path: str, fmt: str | None) -> tuple[LoadResult | PrefLoad | None, str | None, str | None]:
    """(result, fatal error, warning) for one file; a fatal file does not stop the others."""
    try:
        res = load_any(path, fmt)  # conversations, preference pairs/feedback, or plain text (.txt)
    except (DataError, ValueError, OSError) as e:
        return None, str(e), None
    if res.total == 0:
        return res, None, f"{path}: empty file (no rows)"
    if res.valid == 0 and res.format == "unknown":
        return res, f"{path}: no row is in a known layout (see the rejects; map columns or pass --format)", None
    return res, None, None


@app.command()
def check(
    files: Annotated[list[str], typer.Argument(help="Data files (.jsonl .json .csv .tsv .parquet).")],
    format: FormatOpt = None,
    rejects_out: Annotated[str | None, typer.Option("--rejects", help="Write rejected rows (JSONL).")] = None,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Validate files: every row accepted or rejected with file:line and a reason.

    Conversations (SFT), preference files (chosen/rejected pairs or labelled feedback, for stages
    dpo/kto/orpo/simpo) and plain text (.txt, stage pt) are told apart per file and reported alike.

    Exit 0: every row valid; 1: rows rejected; 2: a file is unusable (missing, unreadable, unknown
    or mixed layout). With several files, "format" in --json is the common layout, or the
    comma-joined per-file layouts when they differ."""
    if rejects_out:
        check_output_file(rejects_out, list(files), force, "--rejects")
    checked = [(f, *_check_one(f, format)) for f in files]
    results = [res for _, res, _, _ in checked if res is not None]
    fatal = [{"path": f, "error": e} for f, _, e, _ in checked if e]
    warnings = [w for _, _, _, w in checked if w]
    rejects = [r for res in results for r in res.rejects]
    formats = list(dict.fromkeys(r.format for r in results))
    out = {
        "total": sum(r.total for r in results),
        "valid": sum(r.valid for r in results),
        "rejected": len(rejects),
        "rejects": [r.to_dict(with_raw=False) for r in rejects],
        "format": ",".join(formats),
        "files": [{"path": r.path, "format": r.format, "total": r.total, "valid": r.valid} for r in results],
        "fatal": fatal,
        "warnings": warnings,
        "notes": [n for r in results for n in r.notes],
    }
    if rejects_out:

        write_rejects(rejects, rejects_out)
    for msg in [*(f"[red]error:[/] {escape(x['error'])}" for x in fatal),
                *(f"[yellow]warning:[/] {escape(w)}" for w in warnings)]:
        err_console.print(msg, soft_wrap=True)
    if as_json:
        _emit(out)
    elif results:
        rows = [[r.path, r.format, r.total, r.valid, r.rejected] for r in results]
        console.print(_table("Data check", ["file", "format", "rows", "valid", "rejected"], rows))
        if rejects:
            console.print(_rejects_table(rejects))
        for note in out["notes"]:
            console.print(f"[yellow]note:[/] {escape(note)}")
    raise typer.Exit(2 if fatal else 1 if rejects else 0)


# --- stats ---------------------------------------------------------------------


@app.command()
def stats(
    file: Annotated[str, typer.Argument(help="Data file.")],
    *,
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose tokenizer/template to use.")] = (
        "smollm2-135m-instruct"
    ),
    cutoff: Annotated[int | None, typer.Option(help="Report what this cutoff_len would cut.", min=1)] = None,
    plot: Annotated[str | None, typer.Option(help="Write a PNG histogram + CDF here.")] = None,
    format: FormatOpt = None,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Token lengths, recommended cutoff, turns and n-gram diversity."""

    if plot:
        check_output_file(plot, [file], force, "--plot")
    res = _load(file, format)
    try:
        renderer = st.make_renderer(model)
    except Exception as e:  # noqa: BLE001 - any model-loading failure is fatal, one line
        raise DataError(f"cannot load the tokenizer of {model!r}: {e}") from None
    out = st.compute(res.conversations, renderer, cutoff)
    lens = out.pop("_lengths")
    out.update({"file": file, "format": res.format, "rejected": res.rejected})
    if plot:
        rec = out["recommended_cutoff"]
        out["plot"] = st.plot(lens, plot, [rec["p95"], rec["p99"], *([cutoff] if cutoff else [])])
    if as_json:
        _emit(out)
        return
    _print_stats(out)


def _print_stats(out: dict[str, Any]) -> None:
    tok = out["tokens"]
    keys = ["mean", "p50", "p90", "p95", "p99", "max"]
    rows = [[k, *(tok[k][c] for c in keys)] for k in ("prompt", "response", "total")]
    console.print(_table(f"Tokens per row ({out['rendered']} rows)", ["", *keys], rows))
    rec = out["recommended_cutoff"]
    console.print(f"Recommended cutoff_len: {rec['p95']} (95% of rows fit), {rec['p99']} (99%)")
    cut_rows = [[c["cutoff"], f"{c['rows_cut']:.1%}", f"{c['response_tokens_cut']:.1%}"] for c in out["cut"]]
    console.print(_table("What a cutoff cuts", ["cutoff", "rows cut", "response tokens cut"], cut_rows))
    t, d = out["turns"], out["diversity"]
    console.print(f"User turns per conversation: mean {t['mean']}, min {t['min']}, max {t['max']}")
    console.print(_table("Diversity (distinct-n)", ["metric", "value"], [[k, v] for k, v in d.items()]))
    if out.get("plot"):
        console.print(f"Histogram written to {out['plot']}")


# --- dedup ---------------------------------------------------------------------


@app.command()
def dedup(
    file: Annotated[str, typer.Argument(help="Data file.")],
    threshold: ThresholdOpt = 0.85,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write the de-duplicated rows (JSONL).")] = None,
    format: FormatOpt = None,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Exact and near duplicates (MinHash LSH), reported in groups."""

    if out:
        check_output_file(out, [file], force)
    res = load_rows(file, format)  # with each row's id and meta, written back out with it
    d = find_duplicates(res.conversations, threshold)
    report = {
        "file": file,
        "rows": res.valid,
        "exact_groups": d["exact"],
        "near_groups": d["near"],
        "removed": d["removed"],
        "kept": len(d["keep"]),
        "threshold": threshold,
    }
    if out:
        write_jsonl([res.conversations[i] for i in d["keep"]], out)
        report["out"] = out
    if as_json:
        _emit(report)
        return
    _print_groups("Exact duplicates", d["exact"])
    _print_groups(f"Near duplicates (similarity >= {threshold})", d["near"])
    console.print(f"{d['removed']} of {res.valid} rows would be removed" + (f"; written to {out}" if out else ""))


def _print_groups(title: str, groups: list[list[str]]) -> None:
    rows = [[i + 1, len(g), ", ".join(g[:4]) + (" ..." if len(g) > 4 else "")] for i, g in enumerate(groups)]
    console.print(_table(f"{title}: {len(groups)} groups", ["#", "rows", "where"], rows[:MAX_SHOWN]))


# --- lint ----------------------------------------------------------------------


@app.command()
def lint(
    file: Annotated[str, typer.Argument(help="Data file.")],
    format: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Conflicting answers, short replies, echoed prompts, placeholders, mixed languages."""

    res = _load(file, format)
    report = run_lint(res.conversations)
    report["file"] = file
    if as_json:
        _emit(report)
        return
    console.print(_table("Lint", ["issue", "rows"], [[k, v] for k, v in report["counts"].items()]))
    shown = [[i["kind"], i["source"], i["detail"]] for i in report["issues"][: MAX_SHOWN * 2]]
    if shown:
        console.print(_table("Issues", ["kind", "where", "detail"], shown))


# --- split ---------------------------------------------------------------------


@app.command()
def split(
    file: Annotated[str, typer.Argument(help="Data file.")],
    *,
    val: Annotated[float | None, typer.Option(help="Validation share (default: recommended).")] = None,
    test: Annotated[float, typer.Option(help="Test share.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    label_field: Annotated[str | None, typer.Option(help="Stratify by this field.")] = None,
    out_dir: Annotated[str | None, typer.Option(help="Write train/val/test.jsonl here.")] = None,
    format: FormatOpt = None,
    as_json: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Deterministic train/val/test split (stratified with --label-field)."""

    res = load_rows(file, format, columns={"label": label_field} if label_field else None)
    if label_field and res.valid and all(c.label is None for c in res.conversations):
        raise UsageError(f"{file}: --label-field {label_field!r}: no row has this field; name the label "
                         "column (e.g. output, label, category)")
    share, why = recommend_val_share(res.valid)
    parts = run_split(res.conversations, share if val is None else val, test, seed, bool(label_field))
    for k in parts if out_dir else ():
        check_output_file(Path(out_dir) / f"{k}.jsonl", [file], force, "--out-dir")
    written = {k: write_jsonl(v, Path(out_dir) / f"{k}.jsonl") for k, v in parts.items()} if out_dir else {}
    report = {
        "file": file,
        "rows": res.valid,
        "counts": {k: len(v) for k, v in parts.items()},
        "val": share if val is None else val,
        "test": test,
        "seed": seed,
        "recommended_val": share,
        "why": why,
        "written": {k: str(Path(out_dir) / f"{k}.jsonl") for k in written} if out_dir else {},
    }
    if as_json:
        _emit(report)
        return
    console.print(_table("Split", ["part", "rows"], [[k, v] for k, v in report["counts"].items()]))
    console.print(f"Recommended validation share: {share:.0%} — {why}")
    if val is not None and abs(val - share) > 0.05:
        console.print(f"(you asked for {val:.0%})")


# --- leak ----------------------------------------------------------------------


@app.command()
def leak(
    train: Annotated[str, typer.Argument(help="Training file.")],
    test: Annotated[str, typer.Argument(help="Test/eval file.")],
    threshold: ThresholdOpt = 0.85,
    format: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Test rows whose prompt appears exactly or nearly in train (exit 1 if any)."""

    tr, te = _load(train, format), _load(test, format)
    leaks = find_leaks(tr.conversations, te.conversations, threshold)
    report = {"train": train, "test": test, "test_rows": te.valid, "leaked": len(leaks), "leaks": leaks}
    if as_json:
        _emit(report)
    else:
        rows = [[x["test"], x["train"], x["kind"], x["similarity"]] for x in leaks[:MAX_SHOWN]]
        console.print(_table(f"Leaked test rows: {len(leaks)} of {te.valid}", ["test", "train", "kind", "sim"], rows))
    raise typer.Exit(1 if leaks else 0)


def main() -> None:  # pragma: no cover - for `python -m sftkit.cli.data`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()


# The document -> Q&A -> review workflow (extract, synth, sample, review, agree, augment).
register(app)
