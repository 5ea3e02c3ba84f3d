"""Constants, errors and the quantiser lookup shared by the GGUF writer, verifier and exporter."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import gguf

from sftkit.core.errors import ExportError

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
