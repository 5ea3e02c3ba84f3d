"""Hub datasets by id (``data.train: hf:ORG/NAME:train``). Hugging Face against the real local hub
server (tests/hubserver.py) through huggingface_hub: `sft download --dataset` in a subprocess, then
reading from HF_HOME's cache with the hub gone (layout detection, row accounting, rejects named
``REF/FILE:LINE``), split selection, a run trained on it, resume after a dropped connection, and the
not-downloaded / offline / not-found sentences. ModelScope: its network fetch is replaced at the
library boundary (as in test_sources_modelscope.py); its offline cache lookup is the real library's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import Hub, HubServer
from sftkit.core.errors import DataError, SourceUnavailable
from sftkit.data import load_file
from sftkit.data.load import source_hash
from sftkit.hub.datasets import parse_dataset_ref, split_of

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = "news-org/zh-news"
COMMIT = "c" * 40


def _rows(n: int, tag: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag}新闻{i}属于哪一类？"},
                          {"role": "assistant", "content": "财经"}]} for i in range(n)]


def _jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    d = tmp_path / "repo"
    (d / "data").mkdir(parents=True)
    (d / "data" / "train-00000-of-00001.jsonl").write_text(
        _jsonl([*_rows(4, "训练"), '{"messages": "not a list"}']), encoding="utf-8")
    (d / "test.jsonl").write_text(_jsonl(_rows(2, "测试")), encoding="utf-8")
    (d / "README.md").write_text("# zh-news\n", encoding="utf-8")
    (d / "dataset_infos.json").write_text("{}", encoding="utf-8")  # hub metadata, not data
    return d


@pytest.fixture
def hub(dataset_dir) -> Hub:
    h = Hub()
    h.add_folder(REPO, dataset_dir, COMMIT, kind="dataset")
    return h


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def sft(args: list[str], url: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(SRC), "HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    return subprocess.run([sys.executable, "-m", "sftkit.cli", *args], check=False, env=full,
                          capture_output=True, text=True, timeout=180)


def test_download_then_read_offline_with_row_accounting(hub, hf_home, dataset_dir):
    with HubServer(hub) as url:
        r = sft(["download", "--dataset", f"hf:{REPO}", "--json"], url, hf_home)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    snap = hf_home / "hub" / "datasets--news-org--zh-news" / "snapshots" / COMMIT
    assert Path(info["path"]) == snap and info["source"] == "hf"
    assert info["splits"] == {"test": ["test.jsonl"], "train": ["data/train-00000-of-00001.jsonl"]}
    assert f"use it as data.train: hf:{REPO}:train" in r.stderr

    # the server is gone: the cache answers, rows are accounted for as with a local file
    res = load_file(f"hf:{REPO}:train")
    assert (res.total, res.valid, res.rejected, res.format) == (5, 4, 1, "messages")
    assert res.path == f"hf:{REPO}:train"
    assert res.rejects[0].where == f"hf:{REPO}/data/train-00000-of-00001.jsonl:5"
    assert res.conversations[0].source == f"hf:{REPO}/data/train-00000-of-00001.jsonl:1"
    assert res.conversations[0].messages[0].content == "训练新闻0属于哪一类？"
    assert load_file(f"hf:{REPO}:test").valid == 2
    assert load_file(f"hf:{REPO}:data/*").total == 5  # a glob over the dataset's paths
    assert load_file(f"hf:{REPO}:test.jsonl").total == 2
    # several splits and no choice: refused, naming them
    with pytest.raises(DataError, match=r"several splits .*test: test\.jsonl.*train: data/.*hf:news-org/zh-news:train"):
        load_file(f"hf:{REPO}")
    with pytest.raises(DataError, match="no data file of the dataset matches 'validation'"):
        load_file(f"hf:{REPO}:validation")
    # the content identity follows the cached files (prepared-data cache key, resume fingerprint)
    assert source_hash(f"hf:{REPO}:train") != source_hash(f"hf:{REPO}:test")


def test_nothing_is_downloaded_implicitly(hub, hf_home):
    with HubServer(hub), pytest.raises(SourceUnavailable) as e:  # the hub is up, but reading never asks it
        load_file(f"hf:{REPO}:train")
    msg = str(e.value)
    assert f"sft download --dataset hf:{REPO}" in msg and "never downloads implicitly" in msg and "\n" not in msg
    assert not any("/datasets/" in p for _, p, _ in hub.log)


def test_train_from_a_dataset_id(hub, hf_home, tmp_path, tiny_model_dir):
    from sftkit.core.configio import load_config
    from sftkit.train.recipe import run

    with HubServer(hub) as url:
        assert sft(["download", "--dataset", f"hf:{REPO}"], url, hf_home).returncode == 0
    (tmp_path / "cfg.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: hf:{REPO}:train\n  test: hf:{REPO}:test\n"
        "train:\n  max_steps: 1\n  per_device_train_batch_size: 2\n", encoding="utf-8")
    cfg = load_config(tmp_path / "cfg.yaml", [f"output_dir={tmp_path / 'run'}"])
    assert str(cfg.data.train[0].path) == f"hf:{REPO}:train"  # not made relative to the config file
    res = run(cfg)
    report = json.loads((res.run_dir / "data_report.json").read_text(encoding="utf-8"))
    files = report["train"]["files"]
    assert files[0]["path"] == f"hf:{REPO}:train" and files[0]["rejected"] == 1 and files[0]["valid"] == 4


def test_dropped_connection_is_retried_and_a_second_download_only_fetches_what_is_missing(hub, hf_home, dataset_dir):
    hub.drop["test.jsonl"] = 1
    with HubServer(hub) as url:
        r = sft(["download", "--dataset", f"hf:{REPO}"], url, hf_home)
        assert r.returncode == 0, r.stderr
        assert len(hub.gets("test.jsonl")) == 2  # cut once, fetched again
        before = len(hub.log)
        again = sft(["download", "--dataset", f"hf:{REPO}", "--json"], url, hf_home)
    assert again.returncode == 0, again.stderr
    assert not [p for m, p, _ in hub.log[before:] if m == "GET" and "/resolve/" in p]  # all there: nothing fetched
    snap = Path(json.loads(again.stdout.strip().splitlines()[-1])["path"])
    assert (snap / "test.jsonl").read_bytes() == (dataset_dir / "test.jsonl").read_bytes()


def test_not_found_offline_and_usage(hub, hf_home):
    with HubServer(hub) as url:
        nope = sft(["download", "--dataset", "hf:news-org/nothing"], url, hf_home)
        off = sft(["download", "--dataset", f"hf:{REPO}"], url, hf_home, HF_HUB_OFFLINE="1")
        both = sft(["download", "org/model", "--dataset", f"hf:{REPO}"], url, hf_home)
        bad_split = sft(["download", "--dataset", f"hf:{REPO}:dev"], url, hf_home)
    assert nope.returncode == 2 and "has no dataset 'news-org/nothing'" in nope.stderr
    assert off.returncode == 2 and "HF_HUB_OFFLINE=1 is set" in off.stderr
    assert both.returncode == 2 and "not both" in both.stderr
    # downloaded, but the split asked for is not there: said now, not at training time
    assert bad_split.returncode == 2 and "matches 'dev'" in bad_split.stderr
    assert all("Traceback" not in p.stderr for p in (nope, off, both, bad_split))


def test_reference_parsing_and_split_names():
    ref = parse_dataset_ref("modelscope:huangjintao/zh_cls_fudan-news@v1:train")
    assert (ref.source, ref.repo_id, ref.revision, ref.selector) == (
        "modelscope", "huangjintao/zh_cls_fudan-news", "v1", "train")
    assert ref.repo == "modelscope:huangjintao/zh_cls_fudan-news@v1"
    assert parse_dataset_ref("hf:a/b").selector is None
    for bad in ("hf:justname", "hf:a/b c", "ms:a/b", "hf:a/b@"):
        with pytest.raises(DataError, match="not a dataset id"):
            parse_dataset_ref(bad)
    assert split_of("data/train-00000-of-00001.parquet") == "train"
    assert split_of("news_dev.jsonl") == "validation" and split_of("valid/x.csv") == "validation"
    assert split_of("eval.jsonl") == "test" and split_of("train/test_part.jsonl") == "test"  # the file name wins
    assert split_of("contest.jsonl") is None and split_of("all.jsonl") is None


# -- ModelScope -----------------------------------------------------------------------------------

modelscope = pytest.importorskip("modelscope")


class FakeModelScope:
    """ModelScope's servers behind the real ``snapshot_download``: a download writes the cache layout
    the real library writes (``{cache}/datasets/{org}--{name}/snapshots/{rev}``, read from
    modelscope-hub's source); ``local_files_only`` goes to the real library."""

    def __init__(self, folder: Path, real) -> None:
        self.folder, self.real, self.calls = folder, real, []

    def __call__(self, repo_id, revision=None, cache_dir=None, local_files_only=False, repo_type=None, **kw):
        if local_files_only:
            return self.real(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                             repo_type=repo_type)
        self.calls.append({"repo_id": repo_id, "repo_type": repo_type})
        out = Path(cache_dir) / f"{repo_type}s" / repo_id.replace("/", "--") / "snapshots" / (revision or "master")
        shutil.copytree(self.folder, out, dirs_exist_ok=True)
        return str(out)


def test_modelscope_dataset(tmp_path, monkeypatch, dataset_dir):
    from typer.testing import CliRunner

    from sftkit.cli import app

    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    fake = FakeModelScope(dataset_dir, modelscope.snapshot_download)
    monkeypatch.setattr(modelscope, "snapshot_download", fake)
    ref = "modelscope:huangjintao/zh_cls_fudan-news"
    with pytest.raises(SourceUnavailable, match=f"sft download --dataset {ref}"):
        load_file(f"{ref}:train")
    r = CliRunner().invoke(app, ["download", "--dataset", ref, "--json"])
    assert r.exit_code == 0, r.output
    assert fake.calls == [{"repo_id": "huangjintao/zh_cls_fudan-news", "repo_type": "dataset"}]
    res = load_file(f"{ref}:train")  # the real library's offline lookup
    assert (res.total, res.valid, res.rejected) == (5, 4, 1)
    assert res.rejects[0].where == f"{ref}/data/train-00000-of-00001.jsonl:5"
