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

from sftkit.export.gguf import common, exporter, model, tokenizer, verify, writer
from sftkit.export.gguf.common import QTYPES, GGUFError, QuantizerMissing
from sftkit.export.gguf.exporter import GGUFResult, export_gguf, preflight
from sftkit.export.gguf.verify import verify_gguf
from sftkit.export.gguf.writer import write_gguf

__all__ = [
           "QTYPES",
           "GGUFError",
           "GGUFResult",
           "QuantizerMissing",
           "common",
           "export_gguf",
           "exporter",
           "model",
           "preflight",
           "tokenizer",
           "verify",
           "verify_gguf",
           "write_gguf",
           "writer",
]
