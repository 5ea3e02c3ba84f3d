"""``sft data augment``: typo noise in user turns only (Chinese first), replies byte-identical,
the original id kept, deterministic per seed; the CLI on real files in a subprocess."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from sftkit.core.errors import DataError
from sftkit.data.augment import _neighbours, augment, confusables, noisy
from sftkit.data.rows import load_rows
from wfcli import run_data

ROWS = [
    {"id": "r1", "messages": [
        {"role": "system", "content": "你是企业年报分析助手。"},
        {"role": "user", "content": "恒远新能源2023年的营业收入是多少？"},
        {"role": "assistant", "content": "营业收入为128.64亿元，同比增长23.5%。"}]},
    {"id": "r2", "messages": [
        {"role": "user", "content": "储能业务的收入呢？"},
        {"role": "assistant", "content": "储能系统业务收入31.55亿元。"},
        {"role": "user", "content": "What was the growth rate of the storage business?"},
        {"role": "assistant", "content": "It grew 41.8% year on year."}], "meta": {"chunk": "hy#p2-c1"}},
    {"messages": [{"role": "user", "content": "请问公司的主要风险有哪些？"},
                  {"role": "assistant", "content": "主要风险包括原材料价格波动和行业竞争加剧。"}]},
]


@pytest.fixture
def data(tmp_path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return p


def test_only_prompts_change(data):
    convs = load_rows(data).conversations
    copies, untouched = augment(convs, typos=0.1, seed=3)
    assert untouched == [] and len(copies) == 3
    for src, copy in zip(ROWS, copies, strict=True):
        orig_id = src.get("id") or copy["meta"]["augmented_from"]
        assert copy["id"] == f"{orig_id}#noisy3" and copy["meta"]["augmented_from"] == orig_id
        changed = 0
        for before, after in zip(src["messages"], copy["messages"], strict=True):
            assert before["role"] == after["role"]
            if before["role"] != "user":
                assert after["content"] == before["content"]  # system and replies byte for byte
                continue
            changed += after["content"] != before["content"]
            assert re.findall(r"\d+", after["content"]) == re.findall(r"\d+", before["content"])  # figures kept
        assert changed >= 1 and copy["meta"]["noise"]["edits"] >= 1
    assert copies[1]["meta"]["chunk"] == "hy#p2-c1"  # provenance travels with the copy
    assert copies[2]["meta"]["augmented_from"].startswith("sha1:")


def test_deterministic_per_seed_and_row(data):
    convs = load_rows(data).conversations
    a, _ = augment(convs, 0.05, seed=1)
    b, _ = augment(load_rows(data).conversations, 0.05, seed=1)
    c, _ = augment(list(reversed(load_rows(data).conversations)), 0.05, seed=1)
    d, _ = augment(convs, 0.05, seed=2)
    assert a == b
    assert list(reversed(c)) == a  # a row's noise depends on the seed and its id, not its position
    assert a != d


def test_rate_is_the_share_of_characters_edited():
    text = "公司报告期内实现营业收入同比增长主要原因是储能业务的订单增加，" * 60  # 1,920 editable characters
    rng = random.Random(0)
    rates = []
    for _ in range(5):
        _, edits = noisy(text, 0.05, rng, force=False)
        rates.append(edits / len(text))
    assert 0.04 < sum(rates) / len(rates) < 0.06


def test_chinese_homophones_english_keys_punctuation():
    out, edits = noisy("的" * 200, 1.0, random.Random(0), force=False)
    assert edits == 200 and set(out) <= set("的地得") and {"地", "得"} <= set(out)
    assert "的" in confusables()["地"] and "在" in confusables()["再"]
    assert set(_neighbours()["g"]) == set("fhrtyvbn")
    word, _ = noisy("g" * 300, 1.0, random.Random(1), force=False)
    assert set(word) <= set("gfhrtyvbn") and set(word) & set("fhrtyvbn")
    assert noisy("，。？！", 1.0, random.Random(0), force=False)[0] == ",.?!"
    assert noisy("2023 12.5%", 1.0, random.Random(0), force=True) == ("2023 12.5%", 0)  # nothing editable


def test_bad_rate_is_a_user_error(data):
    with pytest.raises(DataError, match="--typos"):
        augment(load_rows(data).conversations, typos=0.5)


def test_cli_writes_originals_and_copies(data, tmp_path):
    r = run_data("augment", data, "--typos", "0.03", "--seed", "5", "--json")
    assert r.code == 0, r.err
    rep = r.json
    out = Path(rep["out"])
    assert out == tmp_path / "pairs.noisy.jsonl" and (rep["noisy"], rep["written"]) == (3, 6)
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["messages"] for r in rows[:3]] == [r["messages"] for r in ROWS]  # originals first, as they were
    assert [r["id"] for r in rows[3:5]] == ["r1#noisy5", "r2#noisy5"]
    again = run_data("augment", data, "--typos", "0.03", "--seed", "5")
    assert again.code == 2 and "already exists" in again.err
    only = run_data("augment", data, "--noisy-only", "--out", tmp_path / "n.jsonl", "--json")
    assert only.json["written"] == 3
    bad = run_data("augment", data, "--typos", "0.5", "--out", tmp_path / "x.jsonl")
    assert bad.code == 2 and "--typos 0.5" in bad.err and not (tmp_path / "x.jsonl").exists()
