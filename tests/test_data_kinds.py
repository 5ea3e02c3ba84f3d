"""`sft data check` tells conversations, preference files and plain text apart per file and reports each
the same way: rows, valid, rejected with file:line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.data.kinds import file_kind

PROMPT = [{"role": "user", "content": "2+2?"}]
LAYOUTS = {
    "sharegpt_pairs": {"conversations": [{"from": "human", "value": "2+2?"}], "chosen": {"from": "gpt", "value": "4"},
                       "rejected": {"from": "gpt", "value": "5"}},
    "alpaca_pairs": {"instruction": "Add", "input": "2+2", "chosen": "4", "rejected": "5"},
    "prompt_pairs": {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "4"}],
                     "rejected": [{"role": "assistant", "content": "5"}]},
    "implicit_pairs": {"chosen": [*PROMPT, {"role": "assistant", "content": "4"}],
                       "rejected": [*PROMPT, {"role": "assistant", "content": "5"}]},
    "messages_feedback": {"messages": [*PROMPT, {"role": "assistant", "content": "4"}], "label": True},
    "prompt_feedback": {"prompt": "2+2?", "completion": "5", "label": False},
    "alpaca_feedback": {"instruction": "2+2?", "output": "4", "label": True},
}


def check(*files):
    res = CliRunner().invoke(app, ["data", "check", *map(str, files), "--json"])
    return res.exit_code, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_preference_layout_is_detected_and_counted(tmp_path, layout):
    bad = dict(LAYOUTS[layout])
    key = "rejected" if "rejected" in bad else "label"
    bad[key] = bad.get("chosen", "x") if key == "rejected" else "maybe"
    f = tmp_path / "pref.jsonl"
    f.write_text(json.dumps(LAYOUTS[layout]) + "\n" + json.dumps(bad) + "\n")
    code, out = check(f)
    assert out["files"][0]["format"] == layout
    assert (out["total"], out["valid"], out["rejected"], code) == (2, 1, 1, 1)
    assert out["rejects"][0]["line"] == 2
    assert out["rejects"][0]["reason"].startswith(("chosen equals rejected", "field 'label' must be true or false"))


def test_peer_demo_files_of_every_kind(shared_data):
    peers = shared_data / "peers"
    files = [peers / n for n in ("dpo_en_demo.json", "dpo_zh_demo.json", "kto_en_demo.json", "c4_demo.jsonl",
                                 "wiki_demo.txt", "alpaca_en_demo.json")]
    code, out = check(*files)
    assert code == 0 and out["rejected"] == 0
    assert [f["format"] for f in out["files"]] == ["sharegpt_pairs", "sharegpt_pairs", "messages_feedback", "text",
                                                   "text", "alpaca"]
    assert [f["total"] for f in out["files"]][:3] == [300, 300, 300]


def test_a_class_label_leaves_a_file_sft_data(tmp_path):
    """Classification rows carry a label too; only a boolean label beside a reply marks feedback."""
    f = tmp_path / "cls.jsonl"
    f.write_text(json.dumps({"messages": [*PROMPT, {"role": "assistant", "content": "4"}], "label": "math"}) + "\n")
    assert file_kind(f) == "sft"
    assert check(f)[1]["files"][0]["format"] == "messages"


def test_forced_preference_format_and_text_file_kinds(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps(LAYOUTS["prompt_pairs"]) + "\n")
    assert file_kind(f, "prompt_pairs") == "preference"
    txt = tmp_path / "docs.txt"
    txt.write_bytes(b"first document\n\nsecond one\n\xff broken\n")
    code, out = check(txt)
    assert (out["total"], out["valid"], out["rejected"], code) == (3, 2, 1, 1)
    assert out["rejects"][0]["line"] == 4 and "UTF-8" in out["rejects"][0]["reason"]
