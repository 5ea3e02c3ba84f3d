"""Untrusted files: no shipped code runs unless trusted, weights come from safetensors
(pickle needs consent and is still read with weights_only=True), checkpoint files that
are not plain tensors are refused, config paths are resolved and reported, and nothing
is downloaded implicitly. Every "would it run?" check has a marker file that the
attacker's code would create, and a control showing the code does run when allowed."""

from __future__ import annotations

import ast
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from rich.console import Console

from sftkit.core.configio import load_config
from sftkit.core.errors import ModelNotFound, TemplateError, TrainError, UnsafeWeights, UntrustedCode
from sftkit.hub.models import load_model, resolve
from sftkit.train.recipe import run
from trainlib import write_workdir

SRC = Path(__file__).resolve().parents[2] / "src" / "sftkit"


class Evil:
    """Unpickling this creates ``path`` (stands for any code an attacker wants run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _remote_code_model(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    d, marker = tmp_path / "custom", tmp_path / "CODE_RAN"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg |= {"model_type": "evil-llama",
            "auto_map": {"AutoConfig": "evil_code.EvilConfig", "AutoModelForCausalLM": "evil_code.EvilModel"}}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil-llama'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return d, marker


def test_shipped_code_never_runs_unless_trusted(tmp_path, tiny_model_dir):
    folder, marker = _remote_code_model(tmp_path, tiny_model_dir)
    with pytest.raises(UntrustedCode, match=r"evil_code\.py.*model\.trust_remote_code: true"):
        load_model(resolve(folder))
    cfg = write_workdir(tmp_path, folder)
    with pytest.raises(UntrustedCode):
        run(load_config(cfg, ["train.max_steps=1", f"output_dir={tmp_path / 'run'}"]))
    assert not marker.exists()
    assert load_config(cfg).model.trust_remote_code is False  # the default
    load_model(resolve(folder), trust_remote_code=True)  # control: the code is real and runs when trusted
    assert marker.exists()


def test_jinja_template_cannot_run_code(tmp_path, tokenizer):
    from sftkit.core.conversation import Conversation
    from sftkit.templates.registry import load_template
    from sftkit.templates.render import Renderer

    marker = tmp_path / "JINJA_RAN"
    tpl = tmp_path / "evil.jinja"
    tpl.write_text("{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
                   "{% for m in messages %}{{ m.content }}{% endfor %}")
    # sftkit's own sandbox (templates/sandbox.py) refuses the template when it is loaded
    with pytest.raises(TemplateError, match="blocked"):
        renderer = Renderer(load_template(str(tpl), tokenizer), tokenizer)
        renderer.render(Conversation.from_messages([{"role": "user", "content": "a"},
                                                    {"role": "assistant", "content": "b"}]))
    assert not marker.exists()


def _pickle_only(tmp_path: Path, tiny_model_dir: Path, payload: object) -> Path:
    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    torch.save(payload, d / "pytorch_model.bin")
    return d


def test_pickle_weights_need_consent_and_stay_weights_only(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    state = load_file(str(tiny_model_dir / "model.safetensors"))
    benign = _pickle_only(tmp_path / "a", tiny_model_dir, state)
    with pytest.raises(UnsafeWeights, match=r"pickle files only \(pytorch_model\.bin\).*model\.allow_pickle: true"):
        load_model(resolve(benign))
    model = load_model(resolve(benign), allow_pickle=True)  # consent given: the tensors load
    assert torch.equal(model.state_dict()["model.norm.weight"], state["model.norm.weight"])

    marker = tmp_path / "PICKLE_RAN"
    evil = _pickle_only(tmp_path / "b", tiny_model_dir, {"w": Evil(marker)})
    with pytest.raises(UnsafeWeights):
        load_model(resolve(evil))
    with pytest.raises(Exception, match="Weights only load failed"):  # even with consent: weights_only=True
        load_model(resolve(evil), allow_pickle=True)
    assert not marker.exists()
    torch.load(evil / "pytorch_model.bin", weights_only=False)  # control: the payload is real
    assert marker.exists()


def test_training_refuses_pickle_weights_without_consent(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    folder = _pickle_only(tmp_path, tiny_model_dir, load_file(str(tiny_model_dir / "model.safetensors")))
    cfg = write_workdir(tmp_path, folder)
    with pytest.raises(UnsafeWeights, match=r"model\.allow_pickle"):
        run(load_config(cfg, ["train.max_steps=1", f"output_dir={tmp_path / 'run'}"]))
    res = run(load_config(cfg, ["train.max_steps=1", "model.allow_pickle=true", f"output_dir={tmp_path / 'ok'}"]))
    assert res.global_step == 1 and (res.run_dir / "model" / "model.safetensors").is_file()  # we write safetensors


def test_pickle_adapter_needs_consent(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": str(tiny_model_dir)}))
    torch.save(load_file(str(adapter / "adapter_model.safetensors")), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(UnsafeWeights, match=r"adapter weights .* pickle files only \(adapter_model\.bin\)"):
        load_model(resolve(adapter))
    load_model(resolve(adapter), allow_pickle=True)


def test_tampered_checkpoint_is_refused_on_resume_and_paths_are_reported(tmp_path, tiny_model_dir):
    cfg = write_workdir(tmp_path, tiny_model_dir)
    over = ["train.max_steps=4", "train.save_steps=2", "train.per_device_train_batch_size=4", "output_dir=run"]
    buf = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # output_dir given relative: resolved against the current folder, like any CLI path
    try:
        first = run(load_config(cfg, over), console=Console(file=buf, width=400))
    finally:
        os.chdir(cwd)
    said = buf.getvalue()
    assert f"paths: model {tiny_model_dir.resolve()}; data train {tmp_path / 'train.jsonl'}; " \
           f"run folder {tmp_path / 'run'}" in said
    recorded = load_config(first.run_dir / "config.yaml")  # the run folder records resolved paths
    assert recorded.data.train[0].path == tmp_path / "train.jsonl"

    marker = tmp_path / "OPTIMIZER_RAN"
    torch.save({"state": Evil(marker)}, first.run_dir / "checkpoints" / "checkpoint-4" / "optimizer.pt")
    with pytest.raises(TrainError, match=r"refusing to load a checkpoint file that is not plain tensor data"):
        # a bigger max_steps: a finished run with the same config has nothing to resume
        run(load_config(cfg, [*over[:-1], "train.max_steps=6", f"output_dir={first.run_dir}"]), resume="auto")
    assert not marker.exists()


@functools.cache
def _parsed() -> tuple[list[tuple[str, ast.Call]], dict[int, ast.AST]]:
    """Every call in src/sftkit, and the innermost function (or module) holding each."""
    calls, scope_of = [], {}
    for path in sorted(SRC.rglob("*.py")):
        if "examples" in path.relative_to(SRC).parts:
            continue  # the worked examples' data generators (run by hand, never by sftkit), not sftkit's code
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]
        for scope in scopes:  # outer scopes first: the innermost one is written last
            for node in ast.walk(scope):
                if isinstance(node, ast.Call):
                    scope_of[id(node)] = scope
        calls += [(path.name, n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return calls, scope_of


def _calls(name: str) -> list[tuple[str, int, ast.Call]]:
    return [(f, c.lineno, c) for f, c in _parsed()[0] if ast.unparse(c.func).endswith(name)]


def _kw(call: ast.Call, name: str) -> str | None:
    """The keyword's value; for ``f(**kw)``, the value of a ``"name": ...`` entry in a dict in the same function."""
    direct = next((ast.unparse(k.value) for k in call.keywords if k.arg == name), None)
    if direct is not None or not any(k.arg is None for k in call.keywords):
        return direct
    for d in ast.walk(_parsed()[1][id(call)]):
        if isinstance(d, ast.Dict):
            for k, v in zip(d.keys, d.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == name:
                    return ast.unparse(v)
    return None


def test_source_loads_weights_safely():
    """Grep, by syntax tree: every model weights load asks for safetensors (or is a GGUF
    conversion), every torch.load is weights_only=True, no unsafe deserialisers anywhere."""
    model_loads = [(f, n, c) for f, n, c in _calls(".from_pretrained")
                   if ast.unparse(c.func).startswith(("AutoModelForCausalLM", "LlamaForCausalLM"))]
    assert model_loads, "the scan must see the model loads"
    for f, n, c in model_loads:
        assert _kw(c, "use_safetensors") is not None or _kw(c, "gguf_file") is not None, f"{f}:{n}"
    for f, n, c in _calls("torch.load"):
        assert _kw(c, "weights_only") == "True", f"{f}:{n}: torch.load without weights_only=True"
    for bad in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "builtins.eval", "exec"):
        assert not [(f, n) for f, n, c in _calls(bad) if ast.unparse(c.func) == bad], bad
    assert not [(f, n) for f, n, c in _calls("eval") if ast.unparse(c.func) == "eval"]
    for f, n, c in _calls("from_pretrained"):
        assert _kw(c, "trust_remote_code") in (None, "False", "trust_remote_code", "cfg.model.trust_remote_code"), \
            f"{f}:{n}: trust_remote_code must come from the user's setting"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self):
        self.seen.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_POST = do_GET

    def log_message(self, *a):
        pass


def test_nothing_is_downloaded_implicitly(tmp_path):
    """A hub id that is not in the local cache is refused, and no request reaches the hub
    (HF_ENDPOINT points at a local server that records every request; offline mode is off)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path / "hf"),
            "PYTHONPATH": os.pathsep.join(sys.path)}
    code = ("from sftkit.hub.models import ModelNotFound, resolve\n"
            "try:\n    resolve('someorg/some-model')\nexcept ModelNotFound as e:\n    print('REFUSED', e)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                           check=False)
        assert "REFUSED" in r.stdout and "never downloads implicitly" in r.stdout, r.stdout + r.stderr
        assert _Recorder.seen == [], f"sftkit contacted the hub: {_Recorder.seen}"
        # control: the endpoint is really where the hub client would go
        probe = ("from huggingface_hub import snapshot_download\ntry:\n    snapshot_download('someorg/some-model')\n"
                 "except Exception as e:\n    print(type(e).__name__)\n")
        subprocess.run([sys.executable, "-c", probe], capture_output=True, env=env, timeout=120, check=False)
        assert any("someorg/some-model" in p for p in _Recorder.seen), "the control should reach the recorder"
    finally:
        server.shutdown()
    with pytest.raises(ModelNotFound, match="never downloads implicitly"):
        resolve("someorg/some-model")

