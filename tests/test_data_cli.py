"""`sft data ...` through typer's CliRunner: exit codes and the --json last line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftkit.cli.data import app

BROKEN = Path(__file__).parent / "data" / "broken"
runner = CliRunner()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def _rows(tmp_path: Path, rows: list[dict], name: str = "d.jsonl") -> str:
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(p)


def test_check_clean_and_rejected(tmp_path) -> None:
    good = _rows(tmp_path, [{"instruction": "q", "output": "a"}])
    r = runner.invoke(app, ["check", good, "--json"])
    assert r.exit_code == 0
    assert last_json(r.output) | {"files": None} == {"total": 1, "valid": 1, "rejected": 0, "rejects": [],
                                                     "format": "alpaca", "files": None, "fatal": [],
                                                     "warnings": [], "notes": []}  # fmt: skip
    r = runner.invoke(
        app, ["check", str(BROKEN / "roles.jsonl"), good, "--json", "--rejects", str(tmp_path / "q.jsonl")]
    )
    assert r.exit_code == 1
    out = last_json(r.output)
    assert (out["total"], out["valid"], out["rejected"]) == (9, 2, 7) and out["format"] == "messages,alpaca"
    assert out["rejects"][0] == {
        "file": str(BROKEN / "roles.jsonl"),
        "line": 1,
        "reason": "message 1: unknown role 'robot'",
    }
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 7
    r = runner.invoke(app, ["check", good])
    assert r.exit_code == 0 and "alpaca" in r.output


@pytest.mark.parametrize("args", [["check", "missing.jsonl"], ["check", str(BROKEN / "mixed.jsonl")],
                                  ["check", str(BROKEN / "empty.jsonl"), "--format", "nope"]])  # fmt: skip
def test_check_fatal(args) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error:" in r.output and len(r.output.strip().splitlines()) == 1


def test_dedup_lint_leak_split(tmp_path) -> None:
    rows = [{"instruction": f"question number {i}", "output": f"answer {i}"} for i in range(30)]
    rows += [{"instruction": "question number 1", "output": "answer 1"}, {"instruction": "Who?", "output": "{{name}}"}]
    data = _rows(tmp_path, rows)
    r = runner.invoke(app, ["dedup", data, "--json", "--out", str(tmp_path / "dd.jsonl")])
    out = last_json(r.output)
    assert r.exit_code == 0 and out["exact_groups"][0] == [f"{data}:2", f"{data}:31"]
    assert len((tmp_path / "dd.jsonl").read_text().splitlines()) == out["kept"] == 32 - out["removed"]
    r = runner.invoke(app, ["lint", data, "--json"])
    assert r.exit_code == 0 and last_json(r.output)["counts"]["placeholder"] == 1
    test = _rows(tmp_path, [{"instruction": "question number 3", "output": "x"}, {"instruction": "new", "output": "y"}],
                 "t.jsonl")  # fmt: skip
    r = runner.invoke(app, ["leak", data, test, "--json"])
    assert r.exit_code == 1 and last_json(r.output)["leaked"] == 1
    r = runner.invoke(app, ["split", data, "--val", "0.25", "--test", "0.25", "--seed", "1", "--out-dir",
                            str(tmp_path / "sp"), "--json"])  # fmt: skip
    out = last_json(r.output)
    assert r.exit_code == 0 and out["counts"] == {"train": 16, "val": 8, "test": 8}
    assert out["recommended_val"] == 0.2 and "at least 100" in out["why"]
    assert len((tmp_path / "sp" / "val.jsonl").read_text().splitlines()) == 8
    r = runner.invoke(app, ["split", data])
    assert r.exit_code == 0 and "Recommended validation share" in r.output


def test_stats_json_and_plot(tmp_path) -> None:
    rows = [{"instruction": "Say hi " * (i + 1), "output": "你好，世界 " * (i + 1)} for i in range(20)]
    data = _rows(tmp_path, rows)
    png = tmp_path / "h.png"
    r = runner.invoke(app, ["stats", data, "--cutoff", "64", "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    out = last_json(r.output)
    assert out["rows"] == 20 and {"p95", "p99"} <= set(out["recommended_cutoff"])
    assert any(c["cutoff"] == 64 for c in out["cut"]) and out["diversity"]["response_distinct_1"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(app, ["stats", data, "--model", "/nonexistent/model"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_check_reports_every_file_even_when_one_is_fatal(tmp_path) -> None:
    good = _rows(tmp_path, [{"instruction": "问题", "output": "回答"}])
    unknown = _rows(tmp_path, [{"foo": 1}, {"bar": 2}], "unknown.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = runner.invoke(app, ["check", good, str(tmp_path / "missing.jsonl"), unknown, str(empty), "--json"])
    assert r.exit_code == 2
    out = last_json(r.output)
    assert [f["path"] for f in out["fatal"]] == [str(tmp_path / "missing.jsonl"), unknown]
    assert "known layout" in out["fatal"][1]["error"]
    assert out["total"] == 3 and out["valid"] == 1 and out["rejected"] == 2  # the unknown rows are still listed
    assert out["warnings"] == [f"{empty}: empty file (no rows)"]
    r = runner.invoke(app, ["check", str(empty), "--json"])
    assert r.exit_code == 0 and "empty file" in r.output


def test_leak_exact_only_and_split_label_field(tmp_path) -> None:
    data = _rows(tmp_path, [{"instruction": f"q{i}", "output": "a"} for i in range(5)])
    r = runner.invoke(app, ["leak", data, data, "--json"])
    out = last_json(r.output)
    assert r.exit_code == 1 and out["leaked"] == 5
    assert all("_order" not in x for x in out["leaks"])
    r = runner.invoke(app, ["split", data, "--label-field", "nosuch"])
    assert r.exit_code == 2 and "nosuch" in r.output


def test_dedup_and_split_keep_each_rows_id_and_provenance(tmp_path) -> None:
    """A drafted pair's id and meta (chunk, page) survive dedup and split; rows without them get none."""
    rows = [{"id": f"doc#q{i}", "messages": [{"role": "user", "content": f"第{i}题是什么？"},
                                             {"role": "assistant", "content": f"答案{i}。"}],
             "meta": {"chunk": f"c{i}", "page": i}} for i in range(12)]
    rows.append(dict(rows[0], id="doc#dup"))  # an exact duplicate of row 1 under another id: removed
    rows.append({"messages": [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "row"}]})
    data = _rows(tmp_path, rows)
    r = runner.invoke(app, ["dedup", data, "--json", "--out", str(tmp_path / "dd.jsonl")])
    assert r.exit_code == 0 and last_json(r.output)["removed"] == 1
    kept = [json.loads(x) for x in (tmp_path / "dd.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept[:12] == rows[:12] and kept[12] == rows[13]  # every key as it was, nothing added
    r = runner.invoke(app, ["split", str(tmp_path / "dd.jsonl"), "--val", "0.25", "--seed", "0", "--out-dir",
                            str(tmp_path / "sp"), "--json"])  # fmt: skip
    assert r.exit_code == 0
    parts = [json.loads(x) for k in ("train", "val") for x in (tmp_path / "sp" / f"{k}.jsonl").read_text().splitlines()]
    assert sorted(parts, key=json.dumps) == sorted(kept, key=json.dumps)
