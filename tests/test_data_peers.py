"""Real third-party files (../shared/data/peers): zero false rejections, real findings."""

from __future__ import annotations

import pytest

from sftkit.data import load_file
from sftkit.data.dedup import find_duplicates
from sftkit.data.lint import lint

PEERS = {
    "alpaca_en_demo.json": ("alpaca", 999),
    "alpaca_zh_demo.json": ("alpaca", 1000),
    "glaive_toolcall_en_demo.json": ("sharegpt", 300),
    "identity.json": ("alpaca", 91),
}


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_files_load_without_rejects(shared_data, name) -> None:
    res = load_file(shared_data / "peers" / name)
    assert (res.format, res.total) == PEERS[name]
    assert res.rejects == [] and res.valid == res.total


def test_glaive_tool_calls(shared_data) -> None:
    res = load_file(shared_data / "peers" / "glaive_toolcall_en_demo.json")
    calls = [m for c in res.conversations for m in c.messages if m.tool_calls]
    assert calls and all(isinstance(m.tool_calls[0]["arguments"], dict) for m in calls)
    assert sum(1 for c in res.conversations if c.tools) == 300 - 109  # 109 rows have tools "[]"


def test_identity_placeholders(shared_data) -> None:
    res = load_file(shared_data / "peers" / "identity.json")
    report = lint(res.conversations)
    ph = [i for i in report["issues"] if i["kind"] == "placeholder"]
    assert len(ph) >= 80 and "{{name}}" in ph[0]["detail"]


def test_alpaca_en_duplicates(shared_data) -> None:
    res = load_file(shared_data / "peers" / "alpaca_en_demo.json")
    d = find_duplicates(res.conversations)
    assert len(d["exact"]) == 13 and d["removed"] >= 13


def test_alpaca_zh_mixed_language(shared_data) -> None:
    res = load_file(shared_data / "peers" / "alpaca_zh_demo.json")
    counts = lint(res.conversations)["counts"]
    assert 0 < counts["mixed_language"] < 50
