"""The prepared-data cache: a second ``prepare`` on the same inputs loads the first one's result,
and any change to the inputs prepares again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sftkit.core.config import DataConfig
from sftkit.data import cache as prepared_cache
from sftkit.data.prepare import prepare
from sftkit.templates import Renderer, load_template

ROWS = [
    {"messages": [{"role": "user", "content": f"问题 {i} 😊"}, {"role": "assistant", "content": f"回答 {i}"}]}
    for i in range(40)
] + [{"messages": [{"role": "user", "content": "no reply"}]}]  # rejected: does not end on a reply


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SFTKIT_PREPARED_CACHE", raising=False)
    return tmp_path / "home"


def _data(tmp_path, rows=ROWS, **kw) -> DataConfig:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return DataConfig(train=[path], val_size=0.1, **kw)


def _renderer(tokenizer, data: DataConfig, template: str = "auto") -> Renderer:
    return Renderer(load_template(template, tokenizer), tokenizer, data.mask, data.cutoff_len, data.overflow)


def _content(p) -> tuple:
    report = {k: v for k, v in p.report.items() if k != "cache"}
    examples = [(e.input_ids, e.labels, e.text) for e in p.train.examples + p.val.examples]
    return report, examples, [r.to_dict() for r in p.rejects], p.sample, p.val_conversations


def test_second_prepare_is_a_hit_with_the_same_result(tokenizer, tmp_path, home) -> None:
    data = _data(tmp_path)
    first = prepare(data, _renderer(tokenizer, data), seed=3)
    second = prepare(data, _renderer(tokenizer, data), seed=3)
    assert first.report["cache"]["status"] == "stored" and second.report["cache"]["status"] == "hit"
    assert _content(first) == _content(second)
    assert len(first.rejects) == 1 and first.report["train_examples"] + first.report["val_examples"] == 40
    assert len(list((home / "prepared").glob("*.pkl"))) == 1


@pytest.mark.parametrize("change", ["data", "seed", "cutoff", "template"])
def test_any_changed_input_prepares_again(tokenizer, tmp_path, home, change: str) -> None:
    data = _data(tmp_path)
    first = prepare(data, _renderer(tokenizer, data), seed=3)
    seed, template = 3, "auto"
    if change == "data":
        data = _data(tmp_path, ROWS[:-2])
    elif change == "seed":
        seed = 4
    elif change == "cutoff":
        data = _data(tmp_path, cutoff_len=40)
    else:
        template = "chatml"
    again = prepare(data, _renderer(tokenizer, data, template), seed=seed)
    assert again.report["cache"]["status"] == "stored"
    assert _content(again) != _content(first)


def test_off_switch_writes_nothing(tokenizer, tmp_path, home, monkeypatch) -> None:
    monkeypatch.setenv("SFTKIT_PREPARED_CACHE", "0")
    data = _data(tmp_path)
    assert prepare(data, _renderer(tokenizer, data), seed=0).report["cache"] == {"status": "off"}
    assert not (home / "prepared").exists()


def test_a_corrupt_entry_is_prepared_again(tokenizer, tmp_path, home) -> None:
    data = _data(tmp_path)
    first = prepare(data, _renderer(tokenizer, data), seed=0)
    entry = next((home / "prepared").glob("*.pkl"))
    entry.write_bytes(b"not a pickle")
    again = prepare(data, _renderer(tokenizer, data), seed=0)
    assert again.report["cache"]["status"] == "stored" and _content(again) == _content(first)


def test_only_the_newest_entries_are_kept(tokenizer, tmp_path, home) -> None:
    data = _data(tmp_path)
    for seed in range(prepared_cache.KEEP + 2):
        prepare(data, _renderer(tokenizer, data), seed=seed)
    assert len(list((home / "prepared").glob("*.pkl"))) == prepared_cache.KEEP
    assert prepare(data, _renderer(tokenizer, data), seed=prepared_cache.KEEP + 1).report["cache"]["status"] == "hit"


def test_paused_gc_restores_the_collector_state() -> None:
    import gc

    from sftkit.templates.render import paused_gc

    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            pass
        assert not gc.isenabled()  # the inner pause does not re-enable it early
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError
    assert gc.isenabled()



class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_entry_cannot_run_code(tokenizer, tmp_path, home) -> None:
    """Someone who can write into the cache folder must not get code run by the next `sft train`."""
    import pickle

    data = _data(tmp_path)
    first = prepare(data, _renderer(tokenizer, data), seed=0)
    entry = next((home / "prepared").glob("*.pkl"))
    marker = tmp_path / "ran"
    entry.write_bytes(pickle.dumps(_Planted(marker)))
    again = prepare(data, _renderer(tokenizer, data), seed=0)
    assert not marker.exists(), "unpickling the planted entry ran a command"
    assert again.report["cache"]["status"] == "stored" and _content(again) == _content(first)
    entry.write_bytes(pickle.dumps({"train": "not a prepared data set"}))  # harmless but foreign
    assert prepare(data, _renderer(tokenizer, data), seed=0).report["cache"]["status"] == "stored"
