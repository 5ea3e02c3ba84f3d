"""Untrusted files: weights come from safetensors unless the user consents to pickle.

A pickle file (``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``) can run code
while it is unpickled. sftkit loads model and adapter weights from safetensors only;
a folder holding nothing but pickle weights is refused with a clear message unless
``model.allow_pickle: true`` is set, and even then the files are read with
``torch.load(weights_only=True)`` (transformers and peft both do), which refuses
anything but tensors and plain containers. ``trust_remote_code`` stays off unless
the config turns it on; nothing is downloaded implicitly (``sftkit.hub.models``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftkit.core.errors import UnsafeWeights, UntrustedCode
from sftkit.core.vocab import is_dataset_ref

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_SUFFIXES = (".safetensors", ".safetensors.index.json")








def _explicit_weights(folder: Path) -> str | None:
    """transformers honours ``transformers_weights`` in config.json (a file name inside the folder)."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = cfg.get("transformers_weights") if isinstance(cfg, dict) else None
    return name if isinstance(name, str) else None


def weight_files(folder: Path) -> tuple[list[str], list[str]]:
    """``(safetensors files, pickle files)`` directly inside ``folder``."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    safe = [n for n in names if n.endswith(SAFE_SUFFIXES)]
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES) and n != "training_args.bin"]
    return safe, pickled


def use_safetensors(folder: Path, allow_pickle: bool = False, what: str = "model") -> bool:
    """The ``use_safetensors`` value to load ``folder`` with, or ``UnsafeWeights``.

    True when safetensors weights exist (pickle files beside them are never read).
    Pickle-only folders need ``allow_pickle``; then False (transformers' own
    ``weights_only=True`` loading)."""
    safe, pickled = weight_files(folder)
    explicit = _explicit_weights(folder)
    if explicit and not explicit.endswith(SAFE_SUFFIXES) and not allow_pickle:
        raise UnsafeWeights(f"{folder}/config.json points transformers_weights at {explicit!r}, a pickle file; "
                            f"{_consent(what)}")
    if safe or not pickled:
        return True  # no weights at all: transformers reports the missing file itself
    if not allow_pickle:
        raise UnsafeWeights(f"{what} weights in {folder} are pickle files only ({', '.join(pickled[:4])}); "
                            f"unpickling can run code, so sftkit loads safetensors only. {_consent(what)}")
    return False


def _consent(what: str) -> str:
    return ("convert them to safetensors (load once with use_safetensors=False in a session you trust and "
            "save_pretrained(safe_serialization=True)), or, if you trust the files, set model.allow_pickle: true "
            f"(they are then read with torch.load(weights_only=True)) to load this {what}")


def check_remote_code(folder: Path, trust_remote_code: bool) -> None:
    """A model type transformers does not know, with Python code in the folder (``auto_map``):
    loading it means running that code, which needs ``model.trust_remote_code: true``.
    (A known model type loads transformers' own code; shipped code is then ignored.)"""
    if trust_remote_code:
        return
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(cfg, dict) or not cfg.get("auto_map"):
        return
    from transformers import CONFIG_MAPPING

    if cfg.get("model_type") not in CONFIG_MAPPING:
        files = ", ".join(sorted(p.name for p in folder.glob("*.py"))) or "auto_map"
        raise UntrustedCode(f"{folder}: model type {cfg.get('model_type')!r} is not built into transformers and "
                            f"only loads by running the Python code shipped with it ({files}); "
                            "read that code, and if you trust it set model.trust_remote_code: true")


def check_adapter(folder: Path, allow_pickle: bool = False) -> None:
    """PEFT falls back to ``adapter_model.bin`` when no safetensors file is there."""
    use_safetensors(folder, allow_pickle, what="adapter")


def describe_paths(cfg: Any, model_path: Path, run_dir: Path) -> str:
    """Every path the run will read or write, resolved: printed before training and
    recorded (resolved) in the run folder's config.yaml."""
    data = [f"{split} {s.path if is_dataset_ref(s.path) else s.path.resolve()}"
            for split in ("train", "val", "test") for s in getattr(cfg.data, split)]
    template = f"; template {Path(cfg.template).resolve()}" if cfg.template and Path(cfg.template).is_file() else ""
    return f"paths: model {model_path.resolve()}; data {', '.join(data)}{template}; run folder {run_dir.resolve()}"
