"""Data fuzz: broken rows in every layout and file type. The loader never raises an
unhandled exception; every row is accepted or rejected (with a reason and its line);
nothing is silently dropped; accepted rows render (no accept-then-crash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftkit.core.errors import DataError
from sftkit.data import LoadResult, load_file, write_rejects
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.render import Renderer

from .fuzz_corpus import BASE, Corpus, build


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Corpus]:
    return build(tmp_path_factory.mktemp("fuzz"), seed=1234)


@pytest.fixture(scope="module")
def renderer(tokenizer) -> Renderer:
    return Renderer(HFChatTemplate(tokenizer), tokenizer, cutoff_len=256)


def _file_lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8", "surrogateescape").splitlines()


def check_accounting(res: LoadResult, c: Corpus) -> None:
    """Every row accounted for, with a reason and a line that holds the row."""
    assert res.valid + res.rejected == res.total
    if c.rows is not None:
        assert res.total == c.rows, f"{c.path.name}: {c.rows} rows written, the loader saw {res.total}"
    lines = _file_lines(c.path)
    for r in res.rejects:
        assert isinstance(r.reason, str) and r.reason.strip(), r
        assert r.file == str(c.path)
        if c.path.suffix == ".parquet":
            assert 1 <= r.line <= res.total  # parquet: the row number
            continue
        assert 1 <= r.line <= len(lines), (r.line, len(lines))
        first = r.raw.splitlines()[0].strip() if r.raw.strip() else ""
        if first and c.path.suffix in (".jsonl", ".json"):
            assert lines[r.line - 1].strip().lstrip("\ufeff").startswith(first.lstrip("\ufeff")[:200]), (
                c.path.name, r.line, r.reason)
    for conv in res.conversations:
        file, _, line = conv.source.rpartition(":")
        assert file == str(c.path) and line.isdigit()


def test_corpus_every_row_accounted_for(corpus, renderer, tmp_path):
    rejected = 0
    for c in corpus:
        forced = None if c.layout == "auto" else c.layout
        res = load_file(c.path, format=forced)  # forced: a layout change is a reject, never fatal
        check_accounting(res, c)
        rejected += res.rejected
        # rows the loader accepts must not crash the next stage (rendering + tokenizing)
        out = renderer.render_many(res.conversations)
        assert len(out) == res.valid
        # the quarantine file holds every reject, verbatim (undecodable bytes escaped)
        q = tmp_path / f"{c.path.name}.rejects.jsonl"
        assert write_rejects(res.rejects, q) == res.rejected
        assert len(q.read_text(encoding="utf-8").splitlines()) == res.rejected
    assert rejected >= 1000, f"the corpus should hold at least 1,000 broken rows, got {rejected}"


def test_corpus_auto_detect_is_never_a_crash(corpus):
    """Without a forced layout a mutated row may look like another layout: that is the
    documented fatal 'mixed layouts' error naming file:line, or the same accounting."""
    for c in corpus:
        try:
            res = load_file(c.path)
        except DataError as e:
            assert f"{c.path}:" in str(e) and "layout" in str(e), str(e)
            continue
        check_accounting(res, c)


def test_json_array_breaks_stay_one_row_each(tmp_path):
    """A broken element is one reject at its own line; reading resumes at the next element."""
    good = '  {"text": "ok"}'
    elems = [good, '  {"text": "a" oops}', '  {"text": "b"', "  'single quotes'", good,
             '  {"text": "c"} trailing', good]
    p = tmp_path / "a.json"
    p.write_text("[\n" + ",\n".join(elems) + "\n]\n", encoding="utf-8")
    res = load_file(p)
    assert (res.total, res.valid) == (7, 3)
    assert [r.line for r in res.rejects] == [3, 4, 5, 7]
    assert all(r.reason.startswith("invalid JSON") for r in res.rejects)
    # a missing comma: the element after it is rejected at its own line
    p.write_text('[\n  {"text": "a"}\n  {"text": "b"},\n  {"text": "c"}\n]\n', encoding="utf-8")
    res = load_file(p)
    assert [(r.line, r.reason) for r in res.rejects] == [(3, "invalid JSON (missing ',' before this element)")]
    assert [c.source.rsplit(":")[-1] for c in res.conversations] == ["2", "4"]
    # truncated after a complete element: the element counts, the file gets a note (not a phantom row)
    p.write_text('[\n  {"text": "a"},\n  {"text": "b"}', encoding="utf-8")
    res = load_file(p)
    assert (res.total, res.valid, res.rejected) == (2, 2, 0) and "not closed" in res.notes[0]


def test_many_broken_elements_are_counted_and_linear(tmp_path):
    bad = '  {"instruction": "a", "output": "b" oops}'
    p = tmp_path / "bad.json"
    p.write_text("[\n" + ",\n".join([bad] * 3000) + "\n]\n", encoding="utf-8")
    res = load_file(p)
    assert (res.total, res.rejected) == (3000, 3000)
    assert [r.line for r in res.rejects[:3]] == [2, 3, 4]


def test_lone_surrogate_escape_is_rejected_not_a_render_crash(tmp_path, renderer):
    reply = '{"role": "assistant", "content": "ok"}'
    rows = ['{"messages": [{"role": "user", "content": "hi \\ud800"}, ' + reply + "]}",
            '{"messages": [{"role": "user", "content": "emoji \\ud83d\\ude00"}, ' + reply + "]}",
            '{"instruction": "q", "output": "a", "tools": "[{\\"name\\": \\"\\\\udfff\\"}]"}']
    p = tmp_path / "s.jsonl"
    p.write_text("\n".join(rows[:2]) + "\n", encoding="utf-8")
    res = load_file(p)
    assert [r.line for r in res.rejects] == [1] and res.rejects[0].reason.startswith("invalid Unicode")
    assert res.conversations[0].messages[0].content == "emoji 😀"  # a valid surrogate pair is one character
    renderer.render_many(res.conversations)
    p.write_text(rows[2] + "\n", encoding="utf-8")
    res = load_file(p)
    assert res.rejected == 1 and res.rejects[0].reason.startswith("invalid Unicode")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(sorted(BASE)), value=json_values, key=st.sampled_from(
    ["messages", "conversations", "instruction", "input", "output", "history", "tools", "system", "question",
     "answer", "thinking", "text", "category", "label", "role", "content"]))
def test_any_json_value_in_any_field(tmp_path_factory, layout, value, key):
    """Any JSON value in any known field of any layout: a valid row or a reject, never a crash."""
    row = dict(BASE[layout][0])
    row[key] = value
    p = tmp_path_factory.mktemp("hyp") / "one.jsonl"
    p.write_text(json.dumps(row) + "\n" + json.dumps(value) + "\n", encoding="utf-8")
    res = load_file(p, format=layout)
    assert res.total == 2 and res.valid + res.rejected == 2
    assert all(r.reason and r.line in (1, 2) for r in res.rejects)


def _data_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "sftkit.cli", "data", "check", *args, "--json"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_data_check_cli_exit_codes(corpus, tmp_path):
    """`sft data check --json`: exit 1 with rejects, 0 clean, 2 fatal; one JSON object last."""
    broken = next(c for c in corpus if c.path.name == "alpaca.jsonl")
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(BASE["alpaca"][0], ensure_ascii=False) + "\n", encoding="utf-8")
    r = _data_check(str(broken.path), "--format", "alpaca")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["total"] == broken.rows and out["valid"] + out["rejected"] == out["total"]
    assert len(out["rejects"]) == out["rejected"] and all(x["reason"] and x["line"] >= 1 for x in out["rejects"])
    r = _data_check(str(clean))
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["valid"] == 1
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(BASE["messages"][0]) + "\n" + json.dumps(BASE["alpaca"][0]) + "\n")
    r = _data_check(str(mixed))
    assert r.returncode == 2 and f"{mixed}:2" in r.stderr and "Traceback" not in r.stderr


def test_csv_history_cell_empty_or_json(tmp_path):
    """CSV cells are strings: an empty history cell is no history, a JSON list is the history."""
    p = tmp_path / "h.csv"
    p.write_text('instruction,output,history\nq,a,\nq,a,"[[""u"", ""v""]]"\nq,a,"[[""u""]]"\n', encoding="utf-8")
    res = load_file(p)
    assert (res.valid, [r.line for r in res.rejects]) == (2, [4])
    assert [m.content for m in res.conversations[1].messages] == ["u", "v", "q", "a"]
