"""Human review of SFT data: a spot-check sheet, and folding the verdicts back.

The guide's rule is "随机抽样：每1000条抽查50-100条": a random 5-10% of the rows go on a sheet
that people fill in (in Excel or any editor), each row with a verdict: accept, reject (with a
reason) or fix (the response column edited). ``fold`` applies the sheet to the data: rejected
rows move to a quarantine file with the reviewer's reason, fixed rows get the edited response,
and the share of bad rows in the sample estimates how many the whole file holds.

The sheet is written twice, side by side: JSONL for tools, CSV (UTF-8 with a BOM, so Excel shows
Chinese correctly) for people. Rows are matched by id (``sftkit.data.rows.row_id``), not line,
so the data file may be re-sorted or grown between sampling and folding.
"""

from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import DataError
from sftkit.data.rows import read_records, record, row_id, write_records

COLUMNS = ["id", "source", "prompt", "response", "verdict", "reason", "reviewer"]
RATE_RANGE = (50, 100)  # rows per thousand the guide asks to spot-check
VERDICTS = {
    "accept": ("accept", "accepted", "ok", "yes", "y", "pass", "通过", "接受", "保留", "正确"),
    "reject": ("reject", "rejected", "no", "n", "fail", "drop", "拒绝", "不通过", "驳回", "删除", "错误"),
    "fix": ("fix", "fixed", "edit", "edited", "修改", "修正", "已修改"),
}
_VERDICT = {alias: v for v, aliases in VERDICTS.items() for alias in aliases}


def sheet_size(n: int, per_thousand: float) -> int:
    """ceil(n x rate / 1000), at least one row (a tiny file is still checked), at most n."""
    return min(n, max(1, math.ceil(n * per_thousand / 1000))) if n else 0


def _prompt_text(conv: Conversation) -> str:
    msgs = conv.prompt_messages()
    if len(msgs) == 1:
        return msgs[0].content
    return "\n".join(f"[{m.role}] {m.content}" for m in msgs)


def sample(convs: list[Conversation], per_thousand: float, seed: int = 0, allow_any: bool = False
           ) -> list[dict[str, str]]:
    """The review sheet: a seeded random sample of rows, in file order, verdicts empty."""
    lo, hi = RATE_RANGE
    if not allow_any and not lo <= per_thousand <= hi:
        raise DataError(f"--per-thousand {per_thousand}: the guide spot-checks {lo}-{hi} rows per thousand; "
                        "pass --any-rate to use another rate")
    if not 0 < per_thousand <= 1000:
        raise DataError(f"--per-thousand {per_thousand}: must be above 0 and at most 1000")
    firsts = {row_id(c): i for i, c in reversed(list(enumerate(convs)))}  # a repeated row is checked once
    unique = sorted(firsts.values())
    picked = sorted(random.Random(seed).sample(unique, sheet_size(len(unique), per_thousand)))
    return [{"id": row_id(convs[i]), "source": str(convs[i].source), "prompt": _prompt_text(convs[i]),
             "response": convs[i].final_reply() or "", "verdict": "", "reason": "", "reviewer": ""} for i in picked]


def csv_path(sheet: str | Path) -> Path:
    return Path(sheet).with_suffix(".csv")


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): drafted text is
# untrusted, so such cells are written with a leading apostrophe (text to Excel) and read back without it.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _as_text(value: Any) -> Any:
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _from_text(value: str) -> str:
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_START) else value


def write_sheet(rows: list[dict[str, str]], jsonl: str | Path) -> tuple[Path, Path]:
    """The sheet as JSONL and, beside it, as CSV with a BOM (Excel reads a BOM-less file as ANSI); CSV cells
    that a spreadsheet would run as a formula are written as text."""
    jsonl = Path(jsonl)
    write_records(rows, jsonl)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({k: _as_text(v) for k, v in row.items()} for row in rows)
    out = csv_path(jsonl)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(buf.getvalue(), encoding="utf-8-sig", newline="")
    tmp.replace(out)
    return jsonl, out


def read_sheet(path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a sheet, JSONL or CSV (as Excel saves it: UTF-8, with or without a BOM,
    or the GB18030 of a Chinese Windows "CSV" save)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return [(i, {k: "" if v is None else str(v) for k, v in r.items()}) for i, r in read_records(path, "sheet")]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("gb18030", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
    missing = [c for c in ("id", "verdict") if c not in fields]
    if missing:
        raise DataError(f"{path}: not a review sheet: no {', '.join(missing)} column (write one with sft data sample)")
    return [(reader.line_num, {c: _from_text((row.get(fields[c]) or "").strip()) if c in fields else ""
                               for c in COLUMNS}) for row in reader]


def verdict_of(row: dict[str, str], where: str) -> str:
    """``accept``/``reject``/``fix``, or "" when the row was not reviewed."""
    v = (row.get("verdict") or "").strip().lower()
    if not v:
        return ""
    if v not in _VERDICT:
        raise DataError(f"{where}: verdict {row.get('verdict')!r} is not one of accept, reject, fix "
                        "(or 通过, 拒绝, 修改); correct it and run again")
    return _VERDICT[v]


@dataclass(slots=True)
class FoldResult:
    kept: list[dict[str, Any]] = field(default_factory=list)  # data rows to keep (fixes applied)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"accept": 0, "reject": 0, "fix": 0})
    unreviewed: list[str] = field(default_factory=list)  # sheet ids without a verdict
    unknown: list[str] = field(default_factory=list)  # sheet ids no longer in the data
    notes: list[str] = field(default_factory=list)

    def summary(self, total: int) -> dict[str, Any]:
        reviewed = sum(self.counts.values())
        bad = self.counts["reject"] + self.counts["fix"]
        rate = bad / reviewed if reviewed else None
        return {"rows": total, "kept": len(self.kept), "quarantined": len(self.quarantine), **self.counts,
                "reviewed": reviewed, "unreviewed": self.unreviewed, "unknown": self.unknown,
                "error_rate": rate, "estimated_bad_rows": round(rate * total) if rate is not None else None,
                "notes": self.notes}


def _decisions(sheet: list[tuple[int, dict[str, str]]], name: str, res: FoldResult) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for line, row in sheet:
        verdict = verdict_of(row, f"{name}:{line}")
        if not verdict:
            res.unreviewed.append(row.get("id", ""))
        elif row.get("id", "") in out:
            raise DataError(f"{name}:{line}: id {row['id']!r} appears twice in the sheet; keep one row")
        else:
            out[row["id"]] = {**row, "verdict": verdict, "line": str(line)}
    return out


def fold(sheet: list[tuple[int, dict[str, str]]], convs: list[Conversation], name: str = "sheet") -> FoldResult:
    """Apply the sheet's verdicts to ``convs`` (rows not on the sheet are kept as they are)."""
    res = FoldResult()
    decisions = _decisions(sheet, name, res)
    ids = [row_id(c) for c in convs]
    present = set(ids)
    res.unknown = [i for i in decisions if i not in present]
    for conv, rid in zip(convs, ids, strict=True):
        d = decisions.get(rid)
        if d is None:
            res.kept.append(record(conv, rid))
            continue
        res.counts[d["verdict"]] += 1
        _apply(conv, rid, d, res, name)
    return res


def _apply(conv: Conversation, rid: str, d: dict[str, str], res: FoldResult, name: str) -> None:
    where, reviewer = f"{name}:{d['line']}", d.get("reviewer", "")
    if d["verdict"] == "reject":
        reason = d.get("reason") or "rejected in review (no reason given)"
        if not d.get("reason"):
            res.notes.append(f"{where}: {rid} rejected without a reason")
        res.quarantine.append({**record(conv, rid), "reason": reason, "reviewer": reviewer, "source": conv.source})
        return
    last = conv.last_assistant_index()
    edited = d.get("response", "")
    if d["verdict"] == "fix":
        if last is None or not edited.strip():
            raise DataError(f"{where}: verdict fix needs the corrected reply in the response column")
        if edited == conv.messages[last].content:
            res.notes.append(f"{where}: {rid} marked fix but the response is unchanged")
        conv.messages[last].content = edited
    elif last is not None and edited and edited != conv.messages[last].content:
        res.notes.append(f"{where}: {rid} has an edited response but verdict accept: the edit was not applied "
                         "(use fix)")
    conv.meta["review"] = {"verdict": d["verdict"], "reviewer": reviewer}
    res.kept.append(record(conv, rid))
