"""Every worked example ships data that passes `sft data check` and a config that validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.core.configio import load_config

EXAMPLES = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "examples").glob("*/config.yaml"))


def test_there_are_four_examples():
    assert {p.name for p in EXAMPLES} >= {"api_assistant", "tcm_consult", "news_cls", "general_assistant"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_data_passes_check(example):
    cfg = load_config(example / "config.yaml")
    files = [str(s.path) for split in (cfg.data.train, cfg.data.val, cfg.data.test) for s in split]
    assert files and cfg.data.test, "an example needs train and test data"
    res = CliRunner().invoke(app, ["data", "check", *files, "--json"])
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.exit_code == 0, out["rejects"][:3]
    assert out["rejected"] == 0 and out["valid"] == out["total"] > 0


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_has_readme(example):
    text = (example / "README.md").read_text(encoding="utf-8")
    assert "sft run" in text
