"""`sft data` commands never write over their input or over an existing file without --force."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftkit.cli.data import app

ROWS = [{"messages": [{"role": "user", "content": f"q{i % 7}"}, {"role": "assistant", "content": f"a{i % 7}"}]}
        for i in range(20)]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "settings.json").write_text('{"api_key": "x"}', encoding="utf-8")
    return f


@pytest.mark.parametrize("args", [
    ["split", "{data}", "--out-dir", "{dir}"],  # train.jsonl in the out-dir is the input itself
    ["dedup", "{data}", "--out", "{data}"],
    ["dedup", "{data}", "--out", "{dir}/settings.json"],
    ["check", "{data}", "--rejects", "{data}"],
    ["check", "{data}", "--rejects", "{dir}/settings.json"],
])
def test_data_commands_never_overwrite_inputs_or_foreign_files(data: Path, args: list[str]) -> None:
    before = _digest(data.parent)
    argv = [a.format(data=data, dir=data.parent) for a in args]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert "left unchanged" in res.output
    assert _digest(data.parent) == before


def test_force_replaces_an_existing_output_but_never_the_input(data: Path) -> None:
    out = data.parent / "dedup.jsonl"
    out.write_text("old\n", encoding="utf-8")
    assert CliRunner().invoke(app, ["dedup", str(data), "--out", str(out)]).exit_code == 2
    res = CliRunner().invoke(app, ["dedup", str(data), "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert len(out.read_text(encoding="utf-8").splitlines()) == 7
    assert CliRunner().invoke(app, ["dedup", str(data), "--out", str(data), "--force"]).exit_code == 2
    assert len(data.read_text(encoding="utf-8").splitlines()) == 20
