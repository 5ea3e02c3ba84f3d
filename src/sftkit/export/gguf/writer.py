"""Write a GGUF file, streamed one tensor at a time (the header entries first)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from sftkit.export.gguf.common import QT, WRITTEN, GGUFError, Log, check_qtype
from sftkit.export.gguf.model import ModelInfo, permute, read_model, rope_factors
from sftkit.export.gguf.tokenizer import _add_tokenizer, check_tokenizer, folder_template, tokenizer_meta
from sftkit.hub.models import load_tokenizer

# -- writing ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    gguf_name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    file: Path | None  # None: computed (rope_freqs)
    hf_name: str = ""
    n_head: int = 0  # > 0: permute rows for this many heads


def _tensor_type(name: str, shape: tuple[int, ...], wtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    # As llama.cpp: 1-D tensors, norms and biases stay F32; the file type goes to 2-D weights.
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return QT.F32
    block, _ = gguf.GGML_QUANT_SIZES[wtype]
    return QT.F16 if shape[-1] % block else wtype


def _nbytes(shape: tuple[int, ...], q: gguf.GGMLQuantizationType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[q]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size


def _plan(m: ModelInfo, wtype: gguf.GGMLQuantizationType) -> list[_Entry]:
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(m.gguf_arch, m.n_layer)
    plan: list[_Entry] = []
    files = sorted(m.folder.glob("*.safetensors"))
    if not files:
        raise GGUFError(f"{m.folder}: no *.safetensors weights (a pickle-only folder?); export the run with "
                        "`sft export` first")
    seen: set[str] = set()
    for f in files:
        with safe_open(f, "pt") as sf:
            for hf_name in sf.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
                seen.add(hf_name)
                if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and m.tied):
                    continue  # a tied lm_head is read from token_embd by llama.cpp and transformers
                new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise GGUFError(f"{f}: tensor {hf_name!r} has no GGUF name for {m.arch}; this checkpoint has "
                                    "parts sftkit's GGUF writer does not know (convert with llama.cpp)")
                shape = tuple(sf.get_slice(hf_name).get_shape())
                heads = 0
                if m.arch == "llama" and ".q_proj." in hf_name:
                    heads = m.n_head
                elif m.arch == "llama" and ".k_proj." in hf_name:
                    heads = m.n_kv
                plan.append(_Entry(new, shape, _tensor_type(new, shape, wtype), f, hf_name, heads))
    if not m.tied and "lm_head.weight" not in seen:
        raise GGUFError(f"{m.folder}: config.json says the embeddings are not tied but there is no lm_head.weight")
    if m.rope.get("rope_type") == "llama3":
        plan.append(_Entry(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", (m.head_dim // 2,), QT.F32,
                           None))
    return plan


def _data(e: _Entry, m: ModelInfo) -> np.ndarray:
    if e.file is None:
        return rope_factors(m)
    import torch
    from safetensors import safe_open

    with safe_open(e.file, "pt") as sf:
        data = sf.get_tensor(e.hf_name).to(torch.float32).numpy()
    return permute(data, e.n_head) if e.n_head else data


def _add_hparams(w: gguf.GGUFWriter, m: ModelInfo, ftype: gguf.LlamaFileType, name: str) -> None:
    c = m.config
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name if name.lower() != "mistral" else name + "-sftkit")  # transformers reads "mistral" as an arch
    w.add_block_count(m.n_layer)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(m.n_head)
    w.add_head_count_kv(m.n_kv)
    w.add_rope_freq_base(float(m.rope.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    if m.head_dim != c.hidden_size // m.n_head:
        w.add_key_length(m.head_dim)
        w.add_value_length(m.head_dim)
    if m.arch == "llama":  # what llama.cpp writes for llama only
        w.add_vocab_size(m.vocab)
        w.add_rope_dimension_count(m.head_dim)
    if m.rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(m.rope["factor"]))
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


@dataclass(slots=True)
class WriteInfo:
    path: Path
    qtype: str
    bytes: int
    seconds: float
    tensor_types: dict[str, int]
    pre: str
    chat_template: bool
    add_bos: bool
    special_ids: dict[str, int]
    stops: list[str]
    notes: list[str]


def write_gguf(folder: Path, out: Path, qtype: str, name: str | None = None, log: Log = print) -> WriteInfo:
    """Write ``folder`` (a Hugging Face model folder) as GGUF ``out``, type ``f32|f16|bf16|q8_0``."""
    qtype = check_qtype(qtype)
    if qtype not in WRITTEN:
        raise GGUFError(f"{qtype} is made by llama-quantize from an f16 file (export_gguf does that), "
                        "not written directly")
    t0 = time.monotonic()
    m = read_model(folder)
    tj = check_tokenizer(folder)
    tok = load_tokenizer(folder)
    meta = tokenizer_meta(tj, tok, m.vocab, folder_template(folder, tok))
    ftype, wtype = WRITTEN[qtype]
    plan = _plan(m, wtype)
    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[m.gguf_arch])
    try:
        _add_hparams(w, m, ftype, name or folder.name)
        _add_tokenizer(w, meta)
        for e in plan:  # header entries first: the data then streams one tensor at a time
            w.add_tensor_info(e.gguf_name, e.shape, np.dtype(np.float32), _nbytes(e.shape, e.qtype), raw_dtype=e.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for k, e in enumerate(plan):
            w.write_tensor_data(gguf.quants.quantize(_data(e, m), e.qtype))
            if k % 50 == 49:
                log(f"  {k + 1}/{len(plan)} tensors written")
    finally:
        w.close()
    counts: dict[str, int] = {}
    for e in plan:
        counts[e.qtype.name] = counts.get(e.qtype.name, 0) + 1
    return WriteInfo(out, qtype, out.stat().st_size, round(time.monotonic() - t0, 2), counts, meta.pre,
                     meta.chat_template is not None, meta.add_bos, meta.ids, meta.stops, meta.notes)
