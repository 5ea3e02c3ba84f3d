"""``sft generate``: every prompt answered once, resumable by row content, rejects reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftkit.infer.answers import meta_path, run_generate
from sftkit.infer.engine import Engine, GenParams, build_renderer

ROWS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"instruction": "Add", "input": "2 and 2", "output": "4"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    from sftkit.hub.models import load_model, load_tokenizer, resolve

    tok = load_tokenizer(tiny_model_dir)
    return Engine(load_model(resolve(str(tiny_model_dir))), tok, build_renderer(tok), batch_size=2)


def _write(path: Path, rows: list, extra: list[str] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in out.read_text().splitlines()]


class Counter:
    def __init__(self, engine: Engine) -> None:
        self.engine, self.prompts = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, params=None):
        self.prompts += len(prompts)
        return self.engine.generate(prompts, params)


def test_resumable(engine, tmp_path):
    # Mixed layouts in one file are a DataError; use one layout per file.
    data = _write(tmp_path / "data.jsonl", [r for r in ROWS if "messages" in r])
    out = tmp_path / "out.jsonl"
    params = GenParams(max_new_tokens=4)
    first = Counter(engine)
    s1 = run_generate(first, data, out, params)
    assert (s1.generated, s1.skipped, first.prompts) == (3, 0, 3)
    rows = _rows(out)
    assert [r["source"] for r in rows] == ["data.jsonl:1", "data.jsonl:2", "data.jsonl:3"]
    assert rows[0]["reference"] == "Hello!" and "reference" not in rows[1]
    assert rows[2]["messages"][-1] == {"role": "user", "content": "c"} and rows[2]["reference"] == "d"
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n") and rows[0]["finish_reason"] in ("stop", "length")
    assert all(set(r) >= {"source", "input_sha256", "prompt", "messages", "output", "finish_reason"} for r in rows)
    meta = json.loads(meta_path(out).read_text())
    assert meta["format"] == "sftkit-answers" and meta["data"]["name"] == "data.jsonl" and meta["data"]["rows"] == 3

    again = Counter(engine)
    s2 = run_generate(again, data, out, params)
    assert (s2.generated, s2.skipped, again.prompts) == (0, 3, 0)
    assert _rows(out) == rows

    # Delete one line (and tear the last one, as a crash mid-write would): only those come back.
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[2] + "\n" + lines[1][:10])
    third = Counter(engine)
    s3 = run_generate(third, data, out, params)
    assert (s3.generated, third.prompts) == (1, 1)
    final = _rows(out)
    assert sorted(r["source"] for r in final) == ["data.jsonl:1", "data.jsonl:2", "data.jsonl:3"]
    assert {r["source"]: r["output"] for r in final} == {r["source"]: r["output"] for r in rows}, "greedy: same answers"


def test_rejects_are_reported(engine, tmp_path):
    data = _write(tmp_path / "d.jsonl", [ROWS[0], {"messages": [{"role": "assistant", "content": "orphan"}]}],
                  extra=["{broken json", '{"messages": "nope"}'])
    out = tmp_path / "o.jsonl"
    s = run_generate(engine, data, out, GenParams(max_new_tokens=2))
    assert s.generated == 1 and s.total == 4
    assert sorted(r.line for r in s.rejects) == [2, 3, 4]
    assert [r["source"] for r in _rows(out)] == ["d.jsonl:1"]


def test_cli(tiny_model_dir, tmp_path):
    from sftkit.cli import app

    data = _write(tmp_path / "alpaca.jsonl", [ROWS[1], ROWS[1]], extra=["not json"])
    out = tmp_path / "answers.jsonl"
    args = ["generate", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--max-new-tokens", "3"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())  # rich wraps lines at the terminal width (long temp paths)
    assert "2 generated" in said and "1 rejected" in said and "alpaca.jsonl:3" in said
    assert len(_rows(out)) == 2 and (tmp_path / "answers.jsonl.rejects.jsonl").is_file()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "0 generated, 2 already" in " ".join(r.output.split())
    _write(data, [ROWS[1], ROWS[1]])  # the bad line fixed: the earlier rejects file no longer says anything true
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "rejected" not in r.output and not (tmp_path / "answers.jsonl.rejects.jsonl").exists()
    r = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "--data", str(tmp_path / "missing.jsonl"),
                                 "--out", str(out)])
    assert r.exit_code == 2 and "no such file" in r.output and "Traceback" not in r.output


def test_resume_is_keyed_on_row_content(engine, tmp_path):
    """An edited row is answered again (its old answer dropped), a moved row keeps its
    answer under its new line, an identical row is answered once per occurrence."""
    rows = [r for r in ROWS if "messages" in r]
    data = _write(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    params = GenParams(max_new_tokens=4)
    run_generate(engine, data, out, params)
    before = {r["input_sha256"]: r for r in _rows(out)}

    edited = {"messages": [{"role": "user", "content": "Hi, edited"}]}
    _write(data, [edited, rows[0], rows[2], rows[2]])  # row 1 edited -> new row 1; row 1 moved to 2; row 3 twice
    counter = Counter(engine)
    s = run_generate(counter, data, out, params)
    assert (s.generated, s.skipped, s.dropped, counter.prompts) == (2, 2, 1, 2)
    after = _rows(out)
    assert sorted(r["source"] for r in after) == ["data.jsonl:1", "data.jsonl:2", "data.jsonl:3", "data.jsonl:4"]
    by_source = {r["source"]: r for r in after}
    assert by_source["data.jsonl:1"]["messages"] == edited["messages"]
    assert by_source["data.jsonl:2"]["output"] == before[by_source["data.jsonl:2"]["input_sha256"]]["output"]
    assert by_source["data.jsonl:3"]["input_sha256"] == by_source["data.jsonl:4"]["input_sha256"]
    assert not any(r["messages"][-1]["content"] == "Why?" for r in after), "the dropped row's answer is gone"


def test_resume_refuses_another_producer(tiny_model_dir, tmp_path):
    """Answers of another model, template or decoding setting are never mixed into an OUT: the run is
    refused before anything changes; the same producer resumes, and retrained weights count as another."""
    import shutil

    from sftkit.cli import app

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = _write(tmp_path / "data.jsonl", [ROWS[0], ROWS[2]])
    out = tmp_path / "answers.jsonl"
    base = ["generate", str(model), "--data", str(data), "--out", str(out)]
    r = CliRunner().invoke(app, [*base, "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    made_by = json.loads(meta_path(out).read_text())["producer"]
    assert made_by["decoding"] == {"max_new_tokens": 3, "stop": []} and made_by["weights"]
    _write(data, [ROWS[0], ROWS[2], ROWS[3]])
    before = out.read_bytes(), meta_path(out).read_bytes()
    for extra, what in ((["--max-new-tokens", "4"], "decoding"), (["--max-new-tokens", "3", "--temperature", "0.7"],
                                                                   "decoding"), (["--max-new-tokens", "3",
                                                                                  "--template", "chatml"], "template")):
        r = CliRunner().invoke(app, [*base, *extra])
        said = " ".join(r.output.split())
        assert r.exit_code != 0 and "another producer" in said and what in said, (extra, r.output)
        assert (out.read_bytes(), meta_path(out).read_bytes()) == before, "a refused run changed OUT"
    r = CliRunner().invoke(app, [*base, "--max-new-tokens", "3", "--seed", "7"])  # greedy: the seed is moot
    assert r.exit_code == 0 and "1 generated, 2 already" in " ".join(r.output.split()), r.output

    weights = next(model.glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-8:] = bytes(8 - i for i in range(8))  # "retrained": the last bytes of the weights differ
    weights.write_bytes(bytes(blob))
    r = CliRunner().invoke(app, [*base, "--max-new-tokens", "3"])
    assert r.exit_code != 0 and "weights" in " ".join(r.output.split()), r.output
