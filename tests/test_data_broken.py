"""The broken-file corpus: every row accounted for, with the right line and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftkit.core.errors import DataError
from sftkit.data import Reject, enforce, load_file, write_rejects

BROKEN = Path(__file__).parent / "data" / "broken"
EXPECTED = json.loads((BROKEN / "expected.json").read_text(encoding="utf-8"))
NON_FATAL = [n for n, e in EXPECTED.items() if not e["fatal"]]


@pytest.mark.parametrize("name", NON_FATAL)
def test_every_row_accounted_for(name: str) -> None:
    exp = EXPECTED[name]
    res = load_file(BROKEN / name)
    assert res.total == exp["total"]
    assert res.valid + res.rejected == res.total
    got = {str(r.line): r.reason for r in res.rejects}
    assert set(got) == set(exp["rejects"]), got
    for line, prefix in exp["rejects"].items():
        assert got[line].startswith(prefix), (line, got[line])
    for c in res.conversations:
        assert c.source and c.source.startswith(str(BROKEN / name) + ":")


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if e["fatal"]])
def test_fatal_names_the_line(name: str) -> None:
    with pytest.raises(DataError, match=EXPECTED[name]["fatal"]):
        load_file(BROKEN / name)


def test_raw_is_verbatim() -> None:
    res = load_file(BROKEN / "invalid_json.jsonl")
    assert res.rejects[0].raw == "{bad"
    res = load_file(BROKEN / "alpaca.json")
    bad = next(r for r in res.rejects if r.line == 8)
    assert bad.raw.startswith('{"instruction": "a", "output": "b" oops}')


def test_bom_crlf_content_clean() -> None:
    res = load_file(BROKEN / "bom_crlf.jsonl")
    assert [m.content for m in res.conversations[0].messages] == ["hi", "hello"]


def test_sources_and_valid_rows() -> None:
    res = load_file(BROKEN / "alpaca.json")
    first, last = res.conversations[0], res.conversations[-1]
    assert first.source.endswith("alpaca.json:2")
    assert [(m.role, m.content) for m in last.messages] == [
        ("system", "s"),
        ("user", "u"),
        ("assistant", "v"),
        ("user", "a\n\nc"),
        ("assistant", "b"),
    ]


def test_huge_line(tmp_path: Path) -> None:
    big = "x" * 10_000_000
    p = tmp_path / "huge.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": big}]}
    p.write_text(json.dumps(row) + "\n" + '{"messages": "' + big + "\n", encoding="utf-8")
    res = load_file(p)
    assert (res.total, res.valid, res.rejected) == (2, 1, 1)
    assert len(res.conversations[0].messages[1].content) == 10_000_000
    assert res.rejects[0].line == 2 and res.rejects[0].reason.startswith("invalid JSON")


def test_write_rejects_roundtrip(tmp_path: Path) -> None:
    res = load_file(BROKEN / "invalid_utf8.jsonl")
    out = tmp_path / "q" / "rejects.jsonl"
    assert write_rejects(res.rejects, out) == 1
    rec = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert rec["line"] == 2 and rec["reason"].startswith("invalid UTF-8")
    assert rec["raw"].encode("utf-8", "surrogateescape") == b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'


def test_on_error_fail() -> None:
    with pytest.raises(DataError, match=r"roles\.jsonl:1: message 1: unknown role"):
        load_file(BROKEN / "roles.jsonl", on_error="fail")
    load_file(BROKEN / "empty.jsonl", on_error="fail")
    enforce([], "fail")
    with pytest.raises(DataError, match=r"a\.jsonl:3: boom"):
        enforce([Reject("a.jsonl", 3, "boom", "")], "fail")
    with pytest.raises(DataError, match="on_error"):
        enforce([], "ignore")  # type: ignore[arg-type]


def test_forced_format_rejects_instead_of_mixing() -> None:
    res = load_file(BROKEN / "mixed.jsonl", format="messages")
    assert (res.valid, res.rejected) == (1, 1)
    assert res.rejects[0].reason == "missing field 'messages'"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unknown format"):
        load_file(BROKEN / "empty.jsonl", format="weird")
    with pytest.raises(DataError, match="is a directory"):
        load_file(tmp_path)
    (tmp_path / "x.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match="cannot tell the file type"):
        load_file(tmp_path / "x.txt")
    (tmp_path / "obj.json").write_text('{"a": 1}\n{"b": 2', encoding="utf-8")
    res = load_file(tmp_path / "obj.json")  # a .json holding JSON lines is read as JSONL
    assert res.total == 2 and res.rejected == 2
