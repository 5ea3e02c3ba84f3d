"""The model side of a GGUF: architecture, hyper-parameters, llama's q/k permutation, rope factors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from sftkit.export.gguf.common import ARCHS, ROPE_TYPES, GGUFError

# -- the model ------------------------------------------------------------------------------


@dataclass(slots=True)
class ModelInfo:
    folder: Path
    arch: str  # "llama" | "qwen2"
    config: Any  # transformers config
    n_layer: int
    n_head: int
    n_kv: int
    head_dim: int
    vocab: int
    tied: bool
    rope: dict[str, Any]

    @property
    def gguf_arch(self) -> gguf.MODEL_ARCH:
        return ARCHS[self.arch]


def _config_json(folder: Path) -> dict[str, Any]:
    p = folder / "config.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GGUFError(f"{p}: cannot read the model config ({e}); give a Hugging Face model folder "
                        "(an `sft export` output)") from None


def read_model(folder: Path) -> ModelInfo:
    """The hyper-parameters the writer needs; unsupported architectures and ropes are refused."""
    from transformers import AutoConfig

    raw = _config_json(folder)
    arch = raw.get("model_type")
    if arch not in ARCHS:
        raise GGUFError(f"{folder / 'config.json'}: model_type {arch!r} is not supported by sftkit's GGUF writer "
                        f"(only {', '.join(ARCHS)}); convert this model with llama.cpp's convert_hf_to_gguf.py")
    cfg = AutoConfig.from_pretrained(folder)
    n_head = cfg.num_attention_heads
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type") or "default"
    if arch == "llama" and getattr(cfg, "mlp_bias", False):
        raise GGUFError(f"{folder / 'config.json'}: mlp_bias = true is not handled by sftkit's GGUF writer; convert "
                        "this model with llama.cpp's convert_hf_to_gguf.py")
    if rope_type not in ROPE_TYPES or (rope_type == "llama3" and arch != "llama"):
        raise GGUFError(f"{folder / 'config.json'}: rope_type {rope_type!r} (scaled rope) is not handled by sftkit's "
                        f"GGUF writer for {arch} (only default, linear, and llama3 for llama); convert this model with "
                        "llama.cpp's convert_hf_to_gguf.py")
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    return ModelInfo(folder, arch, cfg, cfg.num_hidden_layers, n_head, n_kv, head_dim, cfg.vocab_size,
                     bool(getattr(cfg, "tie_word_embeddings", False)), rope)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k row order -> GGML's interleaved rope pairs (per head: rows
    ``[0..d/2) , [d/2..d)`` become ``0, d/2, 1, d/2+1, ...``). transformers' GGUF loader undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_factors(m: ModelInfo) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` for llama3 rope: the default frequency divided by the scaled one,
    the scaled one taken from transformers' own llama3 rope (what the model ran with)."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](m.config, "cpu")
    theta = float(m.rope.get("rope_theta", 10000.0))
    default = 1.0 / theta ** (torch.arange(0, m.head_dim, 2, dtype=torch.float64) / m.head_dim)
    return (default / scaled.to(torch.float64)).to(torch.float32).numpy()
