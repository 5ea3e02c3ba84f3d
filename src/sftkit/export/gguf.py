"""``sft export RUN --gguf TYPE [--ollama NAME]``: a verified GGUF file without a llama.cpp checkout.

Written with the ``gguf`` package from a Hugging Face folder (the merged export of a run):

- architectures ``llama`` and ``qwen2`` (others are refused by name); tensor names from gguf's
  ``TensorNameMap``; llama's q/k rows permuted to GGML's rope layout (qwen2 needs none); a tied
  ``lm_head`` is left out, as llama.cpp and transformers both tie to ``token_embd`` then;
- types ``f32``, ``f16``, ``bf16``, ``q8_0`` (``gguf.quants``; 1-D tensors, norms and biases stay
  F32; a row that is not a multiple of Q8_0's 32-block falls back to F16). Smaller k-quants
  (``q4_k_m``, ``q5_k_m``, ...) are made by llama.cpp's ``llama-quantize`` from an f16 file this
  module wrote, when that program is installed, and refused with the fix otherwise;
- the tokenizer for byte-level BPE (GPT-2 style: Llama 3, Qwen2, SmolLM2), with llama.cpp's
  pre-tokenizer name found as llama.cpp finds it (a hash of the ids of a check text), else by the
  tokenizer's split regex when it is one llama.cpp names (Llama 3, Qwen2, GPT-2), else
  ``default`` with a note; other tokenizers (SentencePiece / byte-fallback BPE, Unigram,
  WordPiece) are refused by type (llama.cpp's converter handles those);
- the chat template (Jinja) the export carries (none, with a note, when the tokenizer's Jinja does
  not render like the run's JSON template), bos/eos/unk/pad, ``eot`` (the first other single-token
  stop) and ``eom`` (``<|eom_id|>``), which llama.cpp treats as end of generation like eos, and
  every stop string and stop id under ``sftkit.stop_strings`` / ``sftkit.stop_token_ids`` (GGUF
  has no key for a list of stops);
- rope: default, ``linear`` (llama.cpp's scaling keys) and ``llama3`` (llama.cpp's
  ``rope_freqs.weight`` factors, computed with transformers' own llama3 rope function); other
  scaled ropes are refused.

The file is streamed: every tensor's header entry first, then one tensor at a time (peak memory
about one tensor beyond the libraries; the in-memory writer holds every converted tensor).

``verify_gguf`` reloads the file with transformers (``gguf_file=``) and compares logits on 256
positions (chat-rendered conversations and plain texts) with the Hugging Face model, in two
parts, because rounding the weights alone moves logits by more than a fixed threshold would allow
(SmolLM2-135M, measured: f16 0.050, bf16 0.30, q8_0 1.58 max |Δ| out of logits up to ±42):

1. exactness, gated at 1e-4: the reload equals the HF model whose weights went through the same
   ``quantize -> dequantize`` per tensor type as the file holds (read back from it). Names,
   permutation, ties and hyper-parameters must all be right for this to hold (measured 0.0);
2. quality, reported and loosely gated: max |Δ| vs the unrounded model (relative to the largest
   logit), top-1 agreement overall and where the reference's top-1/top-2 gap is at least 0.5,
   mean KL. Issue 21's absolute figures (f16 ≤ 1e-2, q8_0 ≤ 5e-2, top-1 ≥ 99%) are reported
   beside them, met or not, so a reader sees both.

It also checks the tokenizer (same ids on probe texts, same chat template, same bos/eos), the
hyper-parameters transformers reads back, and the metadata keys. transformers reads neither rope
scaling nor llama's attention biases from a GGUF, so such a model is reloaded with its own config
(and its GGUF hyper-parameters checked separately). The numbers go to
``<stem>-<qtype>.verification.json`` beside the GGUF; a file that fails is kept as
``<stem>-<qtype>.unverified.gguf``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from sftkit.core.conversation import Conversation
from sftkit.core.errors import ExportError, GgufNotWritten, RefusedPath, TemplateError, VerificationFailed
from sftkit.core.safepaths import write_text_atomic
from sftkit.export import ollama
from sftkit.export.merge import TEMPLATE_FILE, ExportResult, export_run, read_run
from sftkit.hub.models import load_tokenizer
from sftkit.templates.base import ChatTemplate
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.json_template import JSONTemplate

QT = gguf.GGMLQuantizationType
WRITTEN = {  # qtype -> (general.file_type, type of the 2-D weights)
    "f32": (gguf.LlamaFileType.ALL_F32, QT.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, QT.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, QT.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, QT.Q8_0),
}
LLAMA_QUANTIZE = {"q2_k": "Q2_K", "q3_k_m": "Q3_K_M", "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M", "q5_k_s": "Q5_K_S",
                  "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
QTYPES = (*WRITTEN, *LLAMA_QUANTIZE)
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}
ROPE_TYPES = ("default", "linear", "llama3")

EXACT_LIMIT = 1e-4  # GGUF reload vs the HF model with the same rounding (measured 0.0)
CONFIDENT_GAP = 0.5  # a reference top-1/top-2 logit gap this large is no near-tie
# Loose quality gates per type: (max |Δ| / max |reference logit|, mean KL, top-1 agreement where confident).
# SmolLM2-135M measured: f16 1.0e-3 / 3.8e-6 / 100%, bf16 8.2e-3 / 1.0e-4 / 100%, q8_0 3.7e-2 / 2.2e-3 / 100%.
QUALITY = {"f32": (1e-5, 1e-6, 0.99), "f16": (5e-3, 1e-3, 0.99), "bf16": (3e-2, 5e-3, 0.99),
           "q8_0": (1e-1, 2e-2, 0.99)}
QUALITY_KQUANT = (None, 0.2, 0.9)  # llama.cpp k-quants: no exactness reference; quality only
ISSUE_21 = {"f16": 1e-2, "q8_0": 5e-2}  # the issue's max |Δ| figures (top-1 >= 99% on every position)
POSITIONS = 256

# llama.cpp picks its pre-tokenizer (the split regex) by the sha256 of str(ids) of this text
# (convert_hf_to_gguf.py, get_vocab_base_pre). The hashes of the families sftkit writes are vendored.
CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ '
          '🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}
_PROBE_TEXTS = [
    "The capital of France is Paris. The capital of Germany is",
    "def add(a, b):\n    return a + b\n# 12345",
    "如何查询用户余额？请调用 getUserBalance(userId) 接口。",
    "  leading spaces\tand tabs\n\nand émojis 🦙 ok",
    "Once upon a time, in a land far away, there lived",
    "1234567890 3.14159 e^x",
]
_PROBE_CHATS = [
    [{"role": "user", "content": "如何查询用户余额？"},
     {"role": "assistant", "content": "请调用 getUserBalance(userId) 接口。"},
     {"role": "user", "content": "What is 12345 + 678? Explain step by step."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Write a Python function that reverses a list."},
     {"role": "assistant", "content": "def rev(xs):\n    return xs[::-1]"},
     {"role": "user", "content": "Now in Go, please."}],
]

Log = Callable[[str], None]


class GGUFError(ExportError):
    """The model cannot be written as GGUF: what, where, and what to do instead."""


class QuantizerMissing(GGUFError):
    """A k-quant was asked for but llama.cpp's ``llama-quantize`` is not installed."""


def check_qtype(qtype: str) -> str:
    q = qtype.lower()
    if q not in QTYPES:
        raise GGUFError(f"--gguf {qtype}: use one of {', '.join(WRITTEN)} (written by sftkit) or "
                        f"{', '.join(LLAMA_QUANTIZE)} (llama.cpp's llama-quantize)")
    return q


def find_quantizer() -> str:
    """Path of ``llama-quantize`` (``$LLAMA_QUANTIZE``, else on PATH); ``QuantizerMissing`` with the fix."""
    env = os.environ.get("LLAMA_QUANTIZE")
    if env and Path(env).is_file() and os.access(env, os.X_OK):
        return env
    found = shutil.which("llama-quantize")
    if found:
        return found
    raise QuantizerMissing(
        "k-quant GGUF types (q4_k_m, q5_k_m, ...) are made by llama.cpp's llama-quantize, which is not on PATH"
        + (f" (LLAMA_QUANTIZE={env} is not an executable file)" if env else "") + ". Install llama.cpp "
        "(`brew install llama.cpp`, or build it: `cmake -B build && cmake --build build --target llama-quantize` in a "
        "clone of https://github.com/ggml-org/llama.cpp) and put llama-quantize on PATH or set "
        "LLAMA_QUANTIZE=/path/to/llama-quantize; or export --gguf q8_0 or f16, which need no llama.cpp "
        "(with Ollama: `ollama create NAME -f Modelfile --quantize q4_K_M` quantises an f16 export)")


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


# -- the tokenizer -------------------------------------------------------------------------------


@dataclass(slots=True)
class TokenizerMeta:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    ids: dict[str, int]  # bos, eos, unk, pad, eot, eom (those present)
    add_bos: bool
    chat_template: str | None
    stops: list[str]
    stop_ids: list[int]
    notes: list[str] = field(default_factory=list)


def _tokenizer_json(folder: Path) -> dict[str, Any]:
    p = folder / "tokenizer.json"
    if not p.is_file():
        kind = "SentencePiece (tokenizer.model only)" if (folder / "tokenizer.model").is_file() else "a slow tokenizer"
        raise GGUFError(f"{folder}: the tokenizer is {kind}, with no tokenizer.json; sftkit writes GGUF only for "
                        "byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2): convert this model with llama.cpp's "
                        "convert_hf_to_gguf.py")
    return json.loads(p.read_text(encoding="utf-8"))


def check_tokenizer(folder: Path) -> dict[str, Any]:
    """tokenizer.json, if it is a byte-level BPE (GPT-2 style) tokenizer; refused by type otherwise."""
    tj = _tokenizer_json(folder)
    model = tj.get("model") or {}
    kind = model.get("type", "?")
    byte_level = "ByteLevel" in json.dumps(tj.get("decoder")) or "ByteLevel" in json.dumps(tj.get("pre_tokenizer"))
    if kind == "BPE" and model.get("byte_fallback"):
        kind = "SentencePiece-style BPE (byte_fallback, as Llama 2 / Mistral / TinyLlama)"
    elif kind == "BPE" and not byte_level:
        kind = "BPE without byte-level encoding"
    else:
        kind = "" if kind == "BPE" else kind
    if kind:
        raise GGUFError(f"{folder / 'tokenizer.json'}: the tokenizer is {kind}; sftkit writes GGUF only for "
                        "byte-level BPE tokenizers (GPT-2 style: Llama 3, Qwen2, SmolLM2): convert this model "
                        "with llama.cpp's convert_hf_to_gguf.py")
    return tj


def _token_types(tok: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    rev = {i: t for t, i in tok.get_vocab().items()}
    if len(rev) > vocab_size or max(rev) >= vocab_size:
        raise GGUFError(f"the tokenizer has ids up to {max(rev)} but config.json's vocab_size is {vocab_size}; "
                        "the embedding does not cover the tokenizer (resize the embeddings and export again)")
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        t = rev.get(i)
        if t is None:  # padded vocabulary (Qwen): llama.cpp's placeholder
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(t)
        if t not in added:
            types.append(gguf.TokenType.NORMAL)
        elif decoder[i].special or (t.startswith("<|") and t.endswith("|>")):
            # llama.cpp warns about, and cannot stop on, end-of-turn markers that are not CONTROL
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.USER_DEFINED)
    return tokens, [int(x) for x in types]


def _single_token(tok: Any, s: str) -> int | None:
    enc = tok(s, add_special_tokens=False)["input_ids"]
    return int(enc[0]) if len(enc) == 1 else None


def _special_ids(tok: Any, stops: list[str]) -> dict[str, int]:
    ids = {k: getattr(tok, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")}
    ids = {k: int(v) for k, v in ids.items() if v is not None}
    if "pad" not in ids and "eos" in ids:
        ids["pad"] = ids["eos"]
    singles = [i for i in (_single_token(tok, s) for s in stops) if i is not None]
    eot = next((i for i in singles if i != ids.get("eos")), None)
    if eot is not None:
        ids["eot"] = eot  # llama.cpp ends generation on eos, eot and eom
    eom = _single_token(tok, "<|eom_id|>") if "<|eom_id|>" in stops else None
    if eom is not None:
        ids["eom"] = eom
    return ids


def _pre_by_regex(tok: Any) -> str | None:
    """A vocabulary llama.cpp has no hash for, split with a regex it knows by name (a Qwen2 or Llama 3
    split, or GPT-2's byte-level one): that name. transformers maps the same names back to the same regex."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as splits
    except ImportError:  # another transformers layout: only the hash table is used
        splits = {}
    pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    patterns = [(p.get("pattern") or {}).get("Regex") for p in parts if p.get("type") == "Split"]
    if len(patterns) == 1:
        return next((name for name in ("llama-bpe", "qwen2") if splits.get(name) == patterns[0]), None)
    if len(parts) == 1 and pre.get("type") == "ByteLevel" and pre.get("use_regex"):
        return "gpt-2"
    return None


def tokenizer_meta(tj: dict[str, Any], tok: Any, vocab_size: int, ft: FolderTemplate) -> TokenizerMeta:
    chk = sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()
    pre = KNOWN_PRE.get(chk) or _pre_by_regex(tok) or "default"
    notes = [] if pre != "default" else [
        f"unknown pre-tokenizer (check hash {chk[:12]}…, split regex not one llama.cpp names): tokenizer.ggml.pre "
        "= 'default'; llama.cpp and transformers may split text differently from the original tokenizer"]
    tokens, types = _token_types(tok, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    probe = tok("hi")["input_ids"]
    add_bos = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    return TokenizerMeta(pre, tokens, types, merges, _special_ids(tok, ft.stops), add_bos, ft.jinja, ft.stops,
                         ft.stop_ids, notes + ft.notes)


def _add_tokenizer(w: gguf.GGUFWriter, t: TokenizerMeta) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(t.pre)
    w.add_token_list(t.tokens)
    w.add_token_types(t.types)
    w.add_token_merges(t.merges)
    for k, v in t.ids.items():
        getattr(w, f"add_{k}_token_id")(v)
    w.add_add_bos_token(t.add_bos)
    w.add_add_space_prefix(False)
    if t.chat_template:
        w.add_chat_template(t.chat_template)
    # No GGUF key lists stop strings; Ollama's PARAMETER stop and sftkit read these.
    w.add_array("sftkit.stop_strings", t.stops)
    w.add_array("sftkit.stop_token_ids", t.stop_ids)


# -- the template and stops of an export folder -----------------------------------------------


@dataclass(slots=True)
class FolderTemplate:
    template: ChatTemplate | None  # what sftkit renders with (the JSON template, or the tokenizer's)
    jinja: str | None  # the chat_template for the GGUF (None: the tokenizer's Jinja is not the trained template)
    stops: list[str]
    stop_ids: list[int]
    notes: list[str]


def _generation_eos(folder: Path) -> list[int]:
    try:
        eos = json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, json.JSONDecodeError):
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]


def _render(t: ChatTemplate, messages: list[dict[str, str]]) -> str:
    return "".join(s.text for s in t.segments(Conversation.from_messages(messages), add_generation_prompt=True))


def folder_template(folder: Path, tok: Any) -> FolderTemplate:
    """The template the export was trained with (``sftkit_template.json`` if present, else the
    tokenizer's), the Jinja to embed, and every stop: the template's stop strings, the tokenizer's
    eos and generation_config's eos ids (``sft export`` writes the template's end-of-turn ids there)."""
    hf = HFChatTemplate(tok) if getattr(tok, "chat_template", None) else None
    notes: list[str] = []
    template: ChatTemplate | None = hf
    if (folder / TEMPLATE_FILE).is_file():
        template = JSONTemplate.from_file(folder / TEMPLATE_FILE)
        if hf is None or any(_render(hf, c) != _render(template, c) for c in _PROBE_CHATS):
            hf = None  # the export could not express its JSON template in Jinja: embed none rather than a wrong one
            notes.append(f"the tokenizer's Jinja chat template does not render like {TEMPLATE_FILE}; the GGUF carries "
                         "no chat_template (use the Modelfile, or llama.cpp's --chat-template-file)")
    stops = list(template.stop_strings) if template is not None else []
    ids = set(_generation_eos(folder))
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    for s in stops:
        i = _single_token(tok, s)
        if i is not None:
            ids.add(i)
    texts = [tok.decode([i]) for i in sorted(ids)]  # a stop string is text, not a byte-level token spelling
    stops += [t for i, t in zip(sorted(ids), texts, strict=True) if t not in stops and _single_token(tok, t) == i]
    return FolderTemplate(template, tok.chat_template if hf is not None else None, stops, sorted(ids), notes)


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


# -- verification ----------------------------------------------------------------------------------


@contextmanager
def _alone(gguf_file: Path) -> Iterator[Path]:
    """``gguf_file`` seen through a link in an empty folder: transformers reads config and
    tokenizer files lying beside a ``gguf_file=`` in preference to the GGUF's own metadata."""
    with tempfile.TemporaryDirectory(prefix="sftkit-gguf-") as d:
        link = Path(d) / gguf_file.name
        link.symlink_to(gguf_file.resolve())
        yield link


def _positions(tok: Any, template: ChatTemplate | None) -> list[int]:
    ids: list[int] = []
    if template is not None:
        for chat in _PROBE_CHATS:
            with suppress(TemplateError):  # (a template without a system turn): the texts still cover the model
                ids += tok(_render(template, chat), add_special_tokens=False)["input_ids"]
    for t in _PROBE_TEXTS:
        ids += tok(t, add_special_tokens=False)["input_ids"]
    return (ids * (POSITIONS // len(ids) + 1))[:POSITIONS]


def _logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def _round_like_file(model: Any, m: ModelInfo, types: dict[str, gguf.GGMLQuantizationType]) -> list[str]:
    """Round ``model``'s weights in place through each tensor's type in the file; returns the
    tensors the file lacks (any is a writer bug)."""
    import torch

    names = gguf.get_tensor_name_map(m.gguf_arch, m.n_layer)
    missing = []
    with torch.no_grad():
        for hf_name, p in model.named_parameters():  # shared (tied) parameters come once
            new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            q = types.get(new or "")
            if q is None:
                missing.append(hf_name)
            elif q != QT.F32:
                a = p.detach().numpy()
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, q), q).reshape(a.shape)))
    return missing


def _compare(ref: Any, got: Any) -> dict[str, Any]:
    import torch

    top2 = ref.topk(2, dim=-1).values
    confident = (top2[:, 0] - top2[:, 1]) >= CONFIDENT_GAP
    agree = got.argmax(-1) == ref.argmax(-1)
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    diff = float((got - ref).abs().max())
    return {"max_abs_diff": diff, "max_abs_ref_logit": float(ref.abs().max()),
            "rel_max_abs_diff": diff / max(float(ref.abs().max()), 1e-12),
            "top1_agreement": float(agree.float().mean()), "confident_positions": int(confident.sum()),
            "top1_agreement_confident": float(agree[confident].float().mean()) if bool(confident.any()) else 1.0,
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}


def _quality_gate(q: dict[str, Any], qtype: str) -> dict[str, Any]:
    rel, kl, top1 = QUALITY.get(qtype, QUALITY_KQUANT)
    q["limits"] = {"rel_max_abs_diff": rel, "mean_kl": kl, "top1_agreement_confident": top1,
                   "confident_gap": CONFIDENT_GAP}
    q["ok"] = ((rel is None or q["rel_max_abs_diff"] <= rel) and q["mean_kl"] <= kl
               and q["top1_agreement_confident"] >= top1)
    return q


def _issue_figures(q: dict[str, Any], qtype: str) -> dict[str, Any]:
    limit = ISSUE_21.get(qtype)
    return {"max_abs_diff_limit": limit, "max_abs_diff": q["max_abs_diff"],
            "max_abs_diff_met": None if limit is None else q["max_abs_diff"] <= limit,
            "top1_limit": 0.99, "top1_agreement": q["top1_agreement"], "top1_met": q["top1_agreement"] >= 0.99,
            "gated": False,
            "why": "reported, not gated: rounding the weights alone moves logits past these absolute limits (see "
                   "exactness: the file equals the rounded model)"}


_HPARAMS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")


def _config_check(m: ModelInfo, back: Any) -> dict[str, Any]:
    """The hyper-parameters transformers reads from the GGUF (``back``) against the original."""
    pairs = {k: (getattr(m.config, k, None), getattr(back, k, None)) for k in _HPARAMS}
    pairs["rope_theta"] = (m.rope.get("rope_theta", 10000.0), (back.rope_parameters or {}).get("rope_theta"))
    diffs = {k: [a, b] for k, (a, b) in pairs.items() if a is not None and not _same_value(a, b)}
    return {"same": not diffs, "diffs": diffs}


def _needs_own_config(m: ModelInfo) -> str | None:
    """Why transformers must reload the GGUF with the original config, if it must: it reads neither
    rope scaling nor llama's optional attention biases from a GGUF (llama.cpp reads both)."""
    if (m.rope.get("rope_type") or "default") != "default":
        return f"rope_type {m.rope['rope_type']}"
    if m.arch == "llama" and getattr(m.config, "attention_bias", False):
        return "llama attention biases"
    return None


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):  # GGUF stores float32
        return isinstance(b, int | float) and abs(float(a) - float(b)) <= 1e-6 * max(abs(float(a)), 1e-30)
    return a == b


def _tokenizer_check(tok: Any, gguf_file: Path, jinja: str | None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    texts = [*_PROBE_TEXTS, "<|im_start|>user\nhi<|im_end|>\n", CHKTXT]
    same = [tok(t)["input_ids"] == back(t)["input_ids"] for t in texts]  # special tokens added as each would
    ids = {k: [getattr(tok, f"{k}_token_id"), getattr(back, f"{k}_token_id")] for k in ("bos", "eos")}
    template_same = (back.chat_template or None) == jinja
    ok = all(same) and template_same and all(a == b for a, b in ids.values())
    return {"same_ids": all(same), "probes": len(texts), "probes_differing": [i for i, s in enumerate(same) if not s],
            "chat_template_same": template_same, "bos_eos": ids, "ok": ok}


REQUIRED_KEYS = ("general.architecture", "general.file_type", "{arch}.block_count", "{arch}.context_length",
                 "{arch}.embedding_length", "{arch}.attention.head_count", "{arch}.attention.head_count_kv",
                 "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                 "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "sftkit.stop_strings")


def _metadata_check(reader: gguf.GGUFReader, m: ModelInfo, want_template: bool) -> dict[str, Any]:
    keys = [k.format(arch=m.arch) for k in REQUIRED_KEYS]
    if want_template:
        keys.append("tokenizer.chat_template")
    missing = [k for k in keys if k not in reader.fields]
    pre, ftype = (reader.fields.get(k) for k in ("tokenizer.ggml.pre", "general.file_type"))
    return {"missing": missing, "ok": not missing, "tensors": len(reader.tensors),
            "tokenizer_pre": pre.contents() if pre else None, "file_type": int(ftype.contents()) if ftype else None}


def verify_gguf(hf_folder: Path, gguf_file: Path, qtype: str | None = None, log: Log = print) -> dict[str, Any]:
    """Reload ``gguf_file`` with transformers and check it against ``hf_folder`` (module docstring).
    Returns the verification record; ``record["ok"]`` is the verdict."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    t0 = time.monotonic()
    m = read_model(hf_folder)
    tok = load_tokenizer(hf_folder)
    ft = folder_template(hf_folder, tok)
    reader = gguf.GGUFReader(gguf_file)
    qtype = qtype or _file_qtype(reader)
    ids = _positions(tok, ft.template)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32, use_safetensors=True).eval()
    ref = _logits(model, ids)
    exact: dict[str, Any] = {"limit": EXACT_LIMIT}
    if qtype in WRITTEN:
        exact["missing_tensors"] = _round_like_file(model, m, {t.name: t.tensor_type for t in reader.tensors})
        sim = _logits(model, ids)
    else:
        exact["skipped"] = "the reference rounding for llama.cpp k-quants is not available in gguf.quants"
    del model
    log(f"reloading {gguf_file.name} with transformers (gguf_file=) ...")
    # transformers reads no rope-scaling keys from a GGUF: a scaled model reloads with its own config
    own_config = _needs_own_config(m)
    with _alone(gguf_file) as g:
        back = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32,
                                                    **({"config": m.config} if own_config else {})).eval()
        got = _logits(back, ids)
        config = _config_check(m, AutoConfig.from_pretrained(g.parent, gguf_file=g.name) if own_config
                               else back.config)
        config["reloaded_with_original_config"] = own_config
        del back
        tokenizer = _tokenizer_check(tok, g, ft.jinja)
    if "skipped" not in exact:
        exact["max_abs_diff"] = float((got - sim).abs().max())
        exact["ok"] = exact["max_abs_diff"] <= EXACT_LIMIT and not exact["missing_tensors"]
    quality = _quality_gate(_compare(ref, got), qtype)
    rec = {"gguf": gguf_file.name, "qtype": qtype, "bytes": gguf_file.stat().st_size, "hf_folder": str(hf_folder),
           "positions": len(ids), "exactness": exact, "quality": quality,
           "issue_21_figures": _issue_figures(quality, qtype), "config": config, "tokenizer": tokenizer,
           "metadata": _metadata_check(reader, m, ft.jinja is not None)}
    rec["ok"] = bool(exact.get("ok", True) and quality["ok"] and config["same"] and tokenizer["ok"]
                     and rec["metadata"]["ok"])
    rec["verify_seconds"] = round(time.monotonic() - t0, 1)
    return rec


def _file_qtype(reader: gguf.GGUFReader) -> str:
    ftype = int(reader.fields["general.file_type"].contents())
    for q, (ft, _) in WRITTEN.items():
        if int(ft) == ftype:
            return q
    names = {int(getattr(gguf.LlamaFileType, f"MOSTLY_{v}")): k for k, v in LLAMA_QUANTIZE.items()}
    return names.get(ftype, f"file_type {ftype}")


# -- export ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class GGUFResult:
    path: Path  # the verified GGUF, or <name>.unverified.gguf
    ok: bool
    qtype: str
    hf_folder: Path
    verification: dict[str, Any]
    verification_file: Path
    modelfile: Path | None = None
    ollama_command: str | None = None
    notes: list[str] = field(default_factory=list)
    export: ExportResult | None = None  # the Hugging Face export, when ``src`` was a run folder


def _paths(out_dir: Path, stem: str, qtype: str) -> tuple[Path, Path, Path]:
    base = f"{stem}-{qtype}"
    return out_dir / f"{base}.gguf", out_dir / f"{base}.unverified.gguf", out_dir / f"{base}.verification.json"


def _check_targets(out_dir: Path, stem: str, qtype: str, force: bool) -> None:
    """An existing GGUF is replaced only with ``force``, and only if sftkit wrote it (its
    verification record is beside it)."""
    target, unverified, record = _paths(out_dir, stem, qtype)
    ours = record.is_file() and not record.is_symlink()
    for p in (target, unverified, record):
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise RefusedPath(f"{p} is not a regular file; it was left unchanged: choose another output folder")
        if p.exists() and not ours:
            raise RefusedPath(f"{p} exists and sftkit did not write it (no {record.name} beside it); it was left "
                              "unchanged: move it away or choose another output folder")
        if p.exists() and not force:
            raise RefusedPath(f"{p} exists (an earlier sft export); pass --force to replace it")


def preflight(src: Path, qtype: str, ollama_name: str | None = None) -> tuple[str, str | None]:
    """Every refusal that needs no conversion: the type, llama-quantize for a k-quant, the Ollama
    name, the architecture, rope and tokenizer. Returns ``(qtype, llama-quantize path or None)``."""
    qtype = check_qtype(qtype)
    quantizer = find_quantizer() if qtype in LLAMA_QUANTIZE else None
    if ollama_name:
        ollama.check_name(ollama_name)
    precheck(Path(src))
    return qtype, quantizer


def precheck(src: Path) -> None:
    """Refuse an architecture, rope or tokenizer the writer cannot handle before any merge is spent:
    for a run folder, on its base model (LoRA) or trained model (full) and the run's tokenizer."""
    if (src / "config.yaml").is_file():
        info = read_run(src)
        weights = info.weights if info.kind == "full" else info.base
        tok = info.weights if (info.weights / "tokenizer.json").is_file() else info.base
    elif (src / "config.json").is_file():
        weights = tok = src
    else:
        raise GGUFError(f"{src}: neither a run folder (config.yaml) nor a Hugging Face model folder (config.json)")
    read_model(weights)
    check_tokenizer(tok)


def _hf_folder(src: Path, out_dir: Path, force: bool, dtype: str | None,
               log: Log, device: str = "auto") -> tuple[Path, ExportResult | None]:
    """The Hugging Face folder to convert: ``src`` itself, or the verified export of run ``src`` into ``out_dir``."""
    if not (src / "config.yaml").is_file():
        return src, None
    res = export_run(src, out_dir, dtype=dtype, force=force, log=log, device=device)
    if not res.ok:
        raise VerificationFailed(f"the Hugging Face export of {src} failed verification (kept as {res.out}); "
                                 "no GGUF was written")
    return res.out, res


@contextmanager
def _removing(*paths: Path) -> Iterator[None]:
    try:
        yield
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def _llama_quantize(binary: str, src: Path, dst: Path, qtype: str, log: Log) -> None:
    cmd = [binary, str(src), str(dst), LLAMA_QUANTIZE[qtype]]
    log("running " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not dst.is_file():
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-3:] or ["no output"]
        raise GGUFError(f"llama-quantize failed (exit {proc.returncode}): {' | '.join(tail)}")


def _write_verified(folder: Path, tmp: Path, qtype: str, name: str, log: Log) -> tuple[WriteInfo, dict[str, Any]]:
    info = write_gguf(folder, tmp, qtype, name=name, log=log)
    log(f"wrote {qtype} GGUF ({info.bytes / 1e6:.1f} MB, {info.seconds:.1f} s); verifying ...")
    return info, verify_gguf(folder, tmp, qtype, log=log)


def _convert(folder: Path, tmp: Path, stem: str, qtype: str, quantizer: str | None,
             log: Log) -> tuple[WriteInfo, dict[str, Any]]:
    """Write (and for k-quants, quantise) ``tmp``, and verify it."""
    if quantizer is None:
        return _write_verified(folder, tmp, qtype, stem, log)
    f16 = tmp.with_name(tmp.name.replace(f"-{qtype}.", "-f16."))
    with _removing(f16):
        info, source = _write_verified(folder, f16, "f16", stem, log)
        if not source["ok"]:  # kept under the k-quant's unverified name, said so in its record
            f16.rename(tmp)
            return info, {**source, "note": "this is the f16 source for llama-quantize, which failed verification; "
                                            "llama-quantize was not run"}
        _llama_quantize(quantizer, f16, tmp, qtype, log)
    rec = verify_gguf(folder, tmp, qtype, log=log)
    rec["source_f16"] = {k: source[k] for k in ("exactness", "quality", "ok")}
    rec["ok"] = rec["ok"] and source["ok"]
    return info, rec


def _modelfile(folder: Path, gguf_name: str, name: str) -> ollama.Modelfile:
    tok = load_tokenizer(folder)
    ft = folder_template(folder, tok)
    if ft.template is None:
        raise ollama.ModelfileError(f"{folder}: no chat template (neither {TEMPLATE_FILE} nor a tokenizer "
                                    "chat_template), so there is no TEMPLATE for the Modelfile")
    add_bos = bool(tok.bos_token_id is not None and tok("hi")["input_ids"][:1] == [tok.bos_token_id])
    return ollama.modelfile(gguf_name, ft.template, ft.stops, add_bos=add_bos, name=name)


def _failed_checks(rec: dict[str, Any]) -> list[str]:
    parts = {"exactness": rec["exactness"].get("ok", True), "quality": rec["quality"]["ok"],
             "config": rec["config"]["same"], "tokenizer": rec["tokenizer"]["ok"], "metadata": rec["metadata"]["ok"]}
    return [k for k, ok in parts.items() if not ok] + (["f16 source"] if not rec.get("source_f16", {"ok": 1})["ok"]
                                                       else [])


def _export(folder: Path, out_dir: Path, stem: str, qtype: str, quantizer: str | None, ollama_name: str | None,
            force: bool, log: Log) -> GGUFResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_targets(out_dir, stem, qtype, force)  # again: a run's export may have replaced out_dir
    target, unverified, record = _paths(out_dir, stem, qtype)
    mf = _modelfile(folder, target.name, ollama_name) if ollama_name else None  # refused before the conversion
    if mf is not None:
        ollama.check_writable(out_dir / "Modelfile")
    tmp = out_dir / f".{stem}-{qtype}.{os.getpid()}.partial.gguf"
    with _removing(tmp):  # (after the rename below there is nothing left to remove)
        info, rec = _convert(folder, tmp, stem, qtype, quantizer, log)
        final = target if rec["ok"] else unverified
        for p in (target, unverified):
            p.unlink(missing_ok=True)
        os.replace(tmp, final)
    rec.update(gguf=final.name, write_seconds=info.seconds, tensor_types=info.tensor_types, notes=info.notes)
    res = GGUFResult(final, rec["ok"], qtype, folder, rec, record, notes=list(info.notes))
    if mf is not None and rec["ok"]:
        res.modelfile = ollama.write(out_dir / "Modelfile", mf)
        res.ollama_command = ollama.create_command(ollama_name or "", res.modelfile)
        res.notes += mf.notes
        rec["modelfile_notes"] = mf.notes
    write_text_atomic(record, json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
    return res


def export_gguf(src: Path, out_dir: Path, qtype: str, ollama_name: str | None = None, *, force: bool = False,
                dtype: str | None = None, log: Log = print, device: str = "auto") -> GGUFResult:
    """``sft export SRC --out OUT_DIR --gguf QTYPE [--ollama NAME]``.

    ``src``: a run folder (exported first, verified, into ``out_dir`` as ``sft export`` does) or a
    Hugging Face model folder. Writes ``<stem>-<qtype>.gguf`` and ``<stem>-<qtype>.verification.json``
    into ``out_dir`` (``<stem>``: the exported folder's name), and with ``ollama_name`` a ``Modelfile``
    beside them. Refusals (type, llama-quantize, Ollama name, architecture, tokenizer, existing
    files) come before any work. A file that fails verification is kept as
    ``<stem>-<qtype>.unverified.gguf`` and ``VerificationFailed`` (exit 1) names the failed checks;
    a GGUF problem after a run's folder was exported is ``GgufNotWritten`` (exit 3)."""
    src, out_dir = Path(src), Path(out_dir)
    qtype, quantizer = preflight(src, qtype, ollama_name)
    is_run = (src / "config.yaml").is_file()
    stem = (out_dir if is_run else src).resolve().name
    if out_dir.is_dir():
        _check_targets(out_dir, stem, qtype, force)
    folder, exported = _hf_folder(src, out_dir, force, dtype, log, device)  # the GGUF checks run on the CPU
    try:
        res = _export(folder, out_dir, stem, qtype, quantizer, ollama_name, force, log)
        res.export = exported
    except (GGUFError, ollama.ModelfileError, RefusedPath) as e:
        if not is_run:
            raise
        raise GgufNotWritten(f"{folder} was exported and verified, but no GGUF was written: {e}") from e
    if not res.ok:
        raise VerificationFailed(
            f"{res.path}: the GGUF failed verification ({', '.join(_failed_checks(res.verification))}); the numbers "
            f"are in {res.verification_file}. The file is kept aside as unverified; please report it with that JSON")
    return res
