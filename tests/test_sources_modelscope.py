"""``modelscope:ORG/NAME`` references. The network fetch is replaced at the library boundary
(``modelscope.snapshot_download`` with ``local_files_only=False``) by a fake that writes the
cache layout the real library writes (``{cache}/models/{org}--{name}/snapshots/{rev}``, read
from modelscope-hub's source) or raises the real library's exceptions. Everything else is real:
our parsing, MODELSCOPE_CACHE, the real library's offline cache lookup, our completeness check,
the error sentences, the CLI, and loading the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

modelscope = pytest.importorskip("modelscope")

from sftkit.cli import app  # noqa: E402
from sftkit.core.errors import ModelNotFound  # noqa: E402
from sftkit.hub import sources  # noqa: E402
from sftkit.hub.models import load_model, load_tokenizer, resolve  # noqa: E402

REF = "modelscope:qwen/tiny-llama"


class FakeNetwork:
    """Stands in for ModelScope's servers behind the real ``snapshot_download``."""

    def __init__(self, model_dir: Path, real):
        self.model_dir, self.real, self.calls, self.fail = model_dir, real, [], None

    def __call__(self, model_id, revision=None, cache_dir=None, local_files_only=False, **kw):
        if local_files_only:
            return self.real(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        self.calls.append({"model_id": model_id, "revision": revision, "cache_dir": cache_dir, **kw})
        out = Path(cache_dir) / "models" / model_id.replace("/", "--") / "snapshots" / (revision or "master")
        out.mkdir(parents=True, exist_ok=True)
        if self.fail is not None:
            shutil.copy(self.model_dir / "config.json", out)  # what finished before the failure
            raise self.fail
        for f in self.model_dir.iterdir():
            shutil.copy(f, out / f.name)
        return str(out)


@pytest.fixture
def ms(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms_cache"))
    fake = FakeNetwork(tiny_model_dir, modelscope.snapshot_download)
    monkeypatch.setattr(modelscope, "snapshot_download", fake)
    return fake


def download(*args: str):
    return CliRunner().invoke(app, ["download", *args])


def test_download_resolve_and_load(ms, tmp_path):
    r = download(REF, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["source"] == "modelscope" and info["repo_id"] == "qwen/tiny-llama" and info["chat_template"]
    call = ms.calls[0]
    assert call["model_id"] == "qwen/tiny-llama" and call["cache_dir"] == str(tmp_path / "ms_cache")
    assert "*.bin" in call["ignore_patterns"]  # safetensors only: no duplicate weights fetched
    resolved = resolve(REF)  # the real library's offline lookup finds what the download wrote
    assert resolved.path == Path(info["path"]) and str(resolved.path).startswith(str(tmp_path / "ms_cache"))
    tok = load_tokenizer(resolved.path)
    model = load_model(resolved)
    out = model(tok("微调", return_tensors="pt")["input_ids"])
    assert out.logits.shape[-1] == model.config.vocab_size


def test_revision(ms):
    assert download(f"{REF}@v1.0").exit_code == 0
    assert ms.calls[-1]["revision"] == "v1.0"
    assert resolve(f"{REF}@v1.0").path.name == "v1.0"
    with pytest.raises(ModelNotFound, match=r"not available offline.*sft download modelscope:qwen/tiny-llama@v2"):
        resolve(f"{REF}@v2")


def test_not_cached_is_one_sentence(ms):
    with pytest.raises(ModelNotFound) as e:
        resolve("modelscope:qwen/never-downloaded")
    msg = str(e.value)
    assert "ModelScope" in msg and "sft download modelscope:qwen/never-downloaded" in msg
    assert "MODELSCOPE_CACHE" in msg and "\n" not in msg


def test_interrupted_download_then_resume(ms):
    from modelscope_hub.errors import FileDownloadError

    ms.fail = FileDownloadError("1 of 6 file(s) failed to download", failed_files={"model.safetensors": OSError()})
    r = download(REF)
    assert r.exit_code == 2 and f"run `sft download {REF}` again to resume" in r.output
    with pytest.raises(ModelNotFound, match=r"no \.safetensors weights.*sft download modelscope:qwen/tiny-llama"):
        resolve(REF)  # modelscope returns the partial folder; our check refuses it
    ms.fail = None
    assert download(REF).exit_code == 0
    assert (resolve(REF).path / "model.safetensors").is_file()


def test_not_found_and_unreachable(ms):
    import requests
    from modelscope_hub.errors import NotExistError

    try:  # what modelscope's compat layer does with a 404
        raise requests.exceptions.HTTPError("[E3020] not found") from NotExistError("no such repo")
    except requests.exceptions.HTTPError as e:
        ms.fail = e
    r = download("modelscope:qwen/nope")
    assert r.exit_code == 2 and "ModelScope has no model 'qwen/nope'" in r.output
    ms.fail = requests.exceptions.ConnectionError("Max retries exceeded with url: /api/v1/models")
    r = download(REF)
    assert r.exit_code == 2 and "cannot reach ModelScope" in r.output and "MODELSCOPE_ENDPOINT" in r.output


def test_modelscope_not_installed(monkeypatch):
    monkeypatch.setattr(sources, "modelscope_installed", lambda: False)
    with pytest.raises(ModelNotFound, match=r"needs the modelscope package.*pip install modelscope"):
        resolve(REF)
    r = download(REF)
    assert r.exit_code == 2 and "pip install modelscope" in r.output
