"""The few numbers of a decoder-only transformer that memory and FLOPs depend on.

Read from a config.json (``transformers.AutoConfig``, no weights loaded), or
assumed from a size like ``7B`` using a Llama-like shape of a common family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sftkit.core.configio import load_config
from sftkit.core.errors import ModelNotFound, UsageError
from sftkit.hub.models import resolve

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer (gated MLP, grouped-query attention)."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self.linear_dims().values())

    @property
    def layer_params(self) -> int:
        return self.linear_params_per_layer + 2 * self.hidden  # + two RMSNorm weights

    @property
    def embed_params(self) -> int:
        """Input embeddings plus the output head when it is not tied to them."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def n_params(self) -> int:
        return self.embed_params + self.layers * self.layer_params + self.hidden


def from_hf_config(cfg: Any, name: str = "") -> ModelShape:
    """Shape from a transformers config object (text part for multimodal configs)."""
    text = getattr(cfg, "text_config", None) or cfg
    get = lambda *keys, default=None: next(  # noqa: E731 - tiny local lookup
        (getattr(text, k) for k in keys if getattr(text, k, None) is not None), default)
    hidden = int(get("hidden_size", "n_embd", "d_model"))
    heads = int(get("num_attention_heads", "n_head"))
    return ModelShape(
        name=name or str(get("_name_or_path", "model_type", default="model")),
        hidden=hidden,
        intermediate=int(get("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)),
        layers=int(get("num_hidden_layers", "n_layer")),
        heads=heads,
        kv_heads=int(get("num_key_value_heads", default=heads)),
        head_dim=int(get("head_dim", default=hidden // heads)),
        vocab=int(get("vocab_size")),
        tied=bool(getattr(cfg, "tie_word_embeddings", False)),
    )


def from_path(ref: str | Path, trust_remote_code: bool = False) -> ModelShape:
    """A model reference (bundled alias, folder, run, cached hub id) or a config.json file."""
    from transformers import AutoConfig

    p = Path(ref)
    if p.is_file() and p.suffix in (".yaml", ".yml"):  # a run config: its run, or (not trained yet) its model
        try:
            folder = resolve(str(ref)).path
        except ModelNotFound:
            return from_path(load_config(p).model.name_or_path, trust_remote_code)
    else:
        folder = p.parent if p.is_file() and p.suffix == ".json" else resolve(str(ref)).path
    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return from_hf_config(cfg, name=Path(str(ref)).name)


# Llama-like shapes of common models of each size (hidden, intermediate, layers, heads, kv heads, vocab, tied).
SIZES: dict[str, tuple[str, int, int, int, int, int, int, bool]] = {
    "0.5B": ("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True),
    "1.5B": ("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    "3B": ("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True),
    "7B": ("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, False),
    "8B": ("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, False),
    "13B": ("Llama-2-13B", 5120, 13824, 40, 40, 40, 32000, False),
    "14B": ("Qwen2.5-14B", 5120, 13824, 48, 40, 8, 152064, False),
    "32B": ("Qwen2.5-32B", 5120, 27648, 64, 40, 8, 152064, False),
    "70B": ("Llama-3.1-70B", 8192, 28672, 80, 64, 8, 128256, False),
}


def parse_size(text: str) -> float:
    """'7B' / '7b' / '135M' / '7e9' -> parameters."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmbt]?)\s*", text.lower())
    if not m:
        raise UsageError(f"model size {text!r}: expected a number with B or M, e.g. 7B, 1.5B, 135M")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2)]


def from_size(text: str) -> ModelShape:
    """The table's shape nearest in parameters to ``text`` (layers scaled when it is off by > 15%)."""
    want = parse_size(text)
    shapes = {k: ModelShape(n, h, i, layer, hd, kv, h // hd, v, t)
              for k, (n, h, i, layer, hd, kv, v, t) in SIZES.items()}
    best = min(shapes.values(), key=lambda s: abs(s.n_params - want) / want)
    if abs(best.n_params - want) / want > 0.15:
        layers = max(1, round((want - best.embed_params) / best.layer_params))
        best = replace(best, layers=layers, name=f"{best.name} shape, {layers} layers")
    return best
