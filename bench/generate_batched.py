"""Tokens/s of the generation engine: 64 prompts batched vs one at a time.

Usage: .venv/bin/python bench/generate_batched.py [--prompts 64] [--max-new-tokens 64] [--batch-size 64]
Prints one JSON line. Greedy decoding, so both modes must produce identical tokens
(checked and reported as "identical").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = ["the ocean", "a cat", "Paris", "prime numbers", "coffee", "the moon", "rain", "a library"]
ASKS = [
    "Write one sentence about {}.",
    "Give me a short fact about {}.",
    "Describe {} in a few words.",
    "What is interesting about {}?",
    "用一句话介绍{}。",
    "Explain {} to a child, briefly.",
    "List two things related to {}.",
    "Why do people like {}?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()

    import torch

    if a.threads:
        # On a shared machine one thread per process avoids OpenMP threads spinning
        # while their partner is descheduled, which makes timings erratic.
        torch.set_num_threads(a.threads)

    from sftkit.core.conversation import Conversation
    from sftkit.infer.engine import Engine, GenParams

    engine = Engine.from_ref(a.model, batch_size=a.batch_size)
    texts = [ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)]) for i in range(a.prompts)]
    prompts = [engine.prompt_for(Conversation.from_messages([{"role": "user", "content": t}])) for t in texts]
    params = GenParams(max_new_tokens=a.max_new_tokens)
    engine.generate(prompts[:2], GenParams(max_new_tokens=4))  # warm-up (allocator, kernels)

    t0 = time.perf_counter()
    batched = engine.generate(prompts, params)
    t_batched = time.perf_counter() - t0

    print(f"batched: {t_batched:.1f}s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    single = []
    for i, p in enumerate(prompts):
        single.append(engine.generate([p], params)[0])
        if (i + 1) % 8 == 0:
            print(f"single: {i + 1}/{len(prompts)} {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    t_single = time.perf_counter() - t0

    n_tokens = sum(r.completion_tokens for r in batched)
    out = {
        "bench": "generate_batched",
        "model": a.model,
        "prompts": a.prompts,
        "max_new_tokens": a.max_new_tokens,
        "batch_size": a.batch_size,
        "completion_tokens": n_tokens,
        "batched_s": round(t_batched, 2),
        "single_s": round(t_single, 2),
        "batched_tokens_per_s": round(n_tokens / t_batched, 1),
        "single_tokens_per_s": round(sum(r.completion_tokens for r in single) / t_single, 1),
        "speedup": round(t_single / t_batched, 2),
        "identical": [r.token_ids for r in batched] == [r.token_ids for r in single],
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
