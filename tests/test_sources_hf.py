"""Hugging Face hub references against a real local hub server (tests/hubserver.py):
`sft download` through huggingface_hub with HF_ENDPOINT, resolution from HF_HOME's cache,
revisions, resume after a dropped connection and after a killed download, and the
offline / unreachable / not-found messages."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubserver import Hub, HubServer
from sftkit.core.errors import ModelNotFound
from sftkit.hub.models import load_model, load_tokenizer, resolve

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = "tiny-org/tiny-llama"
COMMIT = "a" * 40
COMMIT_V1 = "b" * 40


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


@pytest.fixture
def hub(tiny_model_dir, tmp_path):
    h = Hub()
    h.add_folder(REPO, tiny_model_dir, COMMIT)
    # an older tagged revision without the chat template: a different snapshot
    old = tmp_path / "old"
    old.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name != "chat_template.jinja":
            (old / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((old / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (old / "tokenizer_config.json").write_text(json.dumps(cfg))
    h.add_folder(REPO, old, COMMIT_V1, revisions=("v1",))
    return h


def sft(args: list[str], url: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(SRC), "HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    return subprocess.run([sys.executable, "-m", "sftkit.cli", *args], check=False, env=full,
                          capture_output=True, text=True, timeout=180)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_download_then_resolve_and_load_from_cache(hub, hf_home, tiny_model_dir):
    with HubServer(hub) as url:
        r = sft(["download", REPO, "--json"], url, hf_home)
    assert r.returncode == 0, r.stderr
    info = last_json(r.stdout)
    assert info["source"] == "hf" and info["repo_id"] == REPO and info["chat_template"] is True
    assert "chat template is included" in r.stderr
    snap = Path(info["path"])
    assert snap == hf_home / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    # every file arrived byte for byte
    for f in tiny_model_dir.iterdir():
        assert hashlib.sha256((snap / f.name).read_bytes()).digest() == hashlib.sha256(f.read_bytes()).digest()

    # server gone: resolution is cache-only, and the model loads for real
    resolved = resolve(REPO)
    assert resolved.path == snap
    tok = load_tokenizer(resolved.path)
    model = load_model(resolved)
    ids = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_train_with_the_hub_reference_after_download(hub, hf_home, tmp_path):
    from sftkit.core.configio import load_config
    from sftkit.train.recipe import run

    with HubServer(hub) as url:
        assert sft(["download", REPO], url, hf_home).returncode == 0
    rows = [{"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": "答案。"}]}
            for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "cfg.yaml").write_text(f"model:\n  name_or_path: {REPO}\ndata:\n  train: train.jsonl\n"
                                       "train:\n  max_steps: 1\n  per_device_train_batch_size: 2\n")
    res = run(load_config(tmp_path / "cfg.yaml", [f"output_dir={tmp_path / 'run'}"]))  # the server is gone
    assert res.global_step == 1 and (res.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert resolve(str(res.run_dir)).path == hf_home / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT


def test_revision_suffix_and_option(hub, hf_home):
    with HubServer(hub) as url:
        r = sft(["download", REPO, "--revision", "v1", "--json"], url, hf_home)
        assert r.returncode == 0, r.stderr
        info = last_json(r.stdout)
        assert info["revision"] == "v1" and Path(info["path"]).name == COMMIT_V1
        assert info["chat_template"] is False and "no chat template" in r.stderr and "template:" in r.stderr
        missing = sft(["download", f"{REPO}@nope"], url, hf_home)
    assert resolve(f"{REPO}@v1").path.name == COMMIT_V1
    # main was never downloaded: one sentence naming the fix
    with pytest.raises(ModelNotFound, match=r"not available offline.*sft download tiny-org/tiny-llama"):
        resolve(REPO)
    assert missing.returncode == 2 and "no revision 'nope'" in missing.stderr
    with pytest.raises(ModelNotFound, match="names revision 'v1' but --revision says 'v2'"):
        from sftkit.hub.sources import parse_ref

        parse_ref(f"{REPO}@v1", "v2")


def test_dropped_connection_resumes_with_a_range_request(hub, hf_home, tiny_model_dir):
    hub.drop["model.safetensors"] = 1
    with HubServer(hub) as url:
        r = sft(["download", REPO, "--json"], url, hf_home)
    assert r.returncode == 0, r.stderr
    ranges = hub.gets("model.safetensors")
    size = (tiny_model_dir / "model.safetensors").stat().st_size
    # the first GET was cut 1 MiB short of the end; huggingface_hub asked for the rest from its last
    # complete 10 MiB chunk, not for the whole file again
    assert size > 11 << 20 and len(ranges) == 2 and ranges[0] is None
    assert ranges[1] == f"bytes={10 << 20}-"
    got = Path(last_json(r.stdout)["path"]) / "model.safetensors"
    assert got.read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


def test_killed_download_is_reported_then_finished_by_a_second_download(hub, hf_home, tiny_model_dir):
    hub.stall = "model.safetensors"
    with HubServer(hub) as url:
        env = {**os.environ, "PYTHONPATH": str(SRC), "HF_ENDPOINT": url, "HF_HOME": str(hf_home),
               "HF_HUB_OFFLINE": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "sftkit.cli", "download", REPO], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert hub.stalled.wait(timeout=120), "the download never reached the weights"
            # the small files finish (in any order, on parallel workers) while the weights hang
            deadline = time.monotonic() + 120
            snap = hf_home / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
            small = [f.name for f in tiny_model_dir.iterdir() if f.name != "model.safetensors"]
            while not all((snap / f).exists() for f in small):
                assert time.monotonic() < deadline, f"small files never finished: {sorted(small)}"
                time.sleep(0.2)
        finally:
            proc.kill()  # a crash / power cut mid-file
            proc.wait()
        hub.stall = None
        hub.release.set()

        with pytest.raises(ModelNotFound) as e:
            resolve(REPO)
        msg = str(e.value)
        assert "incomplete" in msg and f"sft download {REPO}" in msg and "\n" not in msg

        before = len(hub.log)
        r = sft(["download", REPO, "--json"], url, hf_home)
    assert r.returncode == 0, r.stderr
    again = [p for m, p, _ in hub.log[before:] if m == "GET" and "/resolve/" in p]
    # only the unfinished file is fetched again; finished ones are kept
    assert again == [f"/{REPO}/resolve/{COMMIT}/model.safetensors"]
    assert resolve(REPO).path == snap


def test_unknown_repo_unreachable_hub_and_offline_mode(hub, hf_home):
    with HubServer(hub) as url:
        nope = sft(["download", "tiny-org/no-such-model"], url, hf_home)
    assert nope.returncode == 2 and "has no model 'tiny-org/no-such-model'" in nope.stderr
    down = sft(["download", REPO], url, hf_home)  # the server is stopped now
    assert down.returncode == 2
    assert f"cannot reach {url}" in down.stderr and "HF_ENDPOINT" in down.stderr
    assert "Traceback" not in down.stderr
    off = sft(["download", REPO], url, hf_home, HF_HUB_OFFLINE="1")
    assert off.returncode == 2 and "HF_HUB_OFFLINE=1 is set" in off.stderr


def test_reference_parsing():
    from sftkit.hub.sources import looks_like_hub_ref, parse_ref

    assert str(parse_ref("Qwen/Qwen2-7B-Instruct@v1.0")) == "Qwen/Qwen2-7B-Instruct@v1.0"
    ms = parse_ref("modelscope:qwen/Qwen2-7B-Instruct")
    assert (ms.source, ms.repo_id, ms.revision) == ("modelscope", "qwen/Qwen2-7B-Instruct", None)
    assert parse_ref("hf:org/name", "main").revision == "main"
    assert looks_like_hub_ref("org/name@abc") and not looks_like_hub_ref("runs/x/y")
    for bad in ("modelscope:justname", "org/na me", "org//name", "hf:org/name@"):
        with pytest.raises(ModelNotFound, match="not a hub reference"):
            parse_ref(bad)
