"""Throughput of render + tokenize + mask vs TRL's SFTTrainer dataset preparation.

Usage: .venv/bin/python bench/templates_render.py [--rows 100000] [--trl-rows 20000]

Both sides get the same generated conversations and the bundled SmolLM2
tokenizer. sftkit: ``Renderer.render_many`` in batches of 1,000 (the tokenizer's
own template, and the shipped ``chatml`` JSON template). TRL:
``SFTTrainer._prepare_dataset`` (chat template + tokenization through
``datasets.map``, one process), on a subset when ``--trl-rows`` is smaller.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [
    "the",
    "model",
    "learns",
    "to",
    "answer",
    "questions",
    "about",
    "data",
    "templates",
    "and",
    "tokens",
    "你好",
    "世界",
    "数据",
    "😊",
    "🚀",
]


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": text(3, 10)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            msgs += [{"role": "user", "content": text(5, 40)}, {"role": "assistant", "content": text(10, 80)}]
        out.append(msgs)
    return out


def bench_sftkit(tok: Any, rows: list[list[dict[str, str]]], template: str) -> float:
    from sftkit.conversation import Conversation
    from sftkit.templates import Renderer, load_template

    r = Renderer(load_template(template, tok), tok)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(rows), 1000):
        batch = [Conversation.from_messages(m) for m in rows[i : i + 1000]]
        n += sum(1 for x in r.render_many(batch) if x.n_trainable > 0)  # type: ignore[union-attr]
    assert n == len(rows)
    return len(rows) / (time.perf_counter() - t0)


def bench_trl(tok: Any, rows: list[list[dict[str, str]]]) -> float:
    import torch
    from datasets import Dataset, disable_progress_bars
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, report_to="none", max_length=None, dataset_num_proc=None, use_cpu=True, bf16=False
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            processing_class=tok,
            train_dataset=Dataset.from_list([{"messages": m} for m in rows[:8]]),
        )
        ds = Dataset.from_list([{"messages": m} for m in rows])
        t0 = time.perf_counter()
        prepared = trainer._prepare_dataset(ds, tok, args, False, None, "train")
        dt = time.perf_counter() - t0
    assert len(prepared) == len(rows)
    return len(rows) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--trl-rows", type=int, default=100_000)
    a = ap.parse_args()

    from sftkit.models import BUNDLED_ALIAS, load_tokenizer, resolve

    tok = load_tokenizer(resolve(BUNDLED_ALIAS).path)
    rows = conversations(a.rows)
    result = {
        "bench": "templates_render",
        "rows": a.rows,
        "sftkit_auto_rows_per_s": round(bench_sftkit(tok, rows, "auto")),
        "sftkit_json_chatml_rows_per_s": round(bench_sftkit(tok, rows, "chatml")),
        "trl_rows": min(a.trl_rows, a.rows),
        "trl_sft_prepare_rows_per_s": round(bench_trl(tok, rows[: a.trl_rows])),
        "cpu_count": os.cpu_count(),
    }
    result["speedup_auto_vs_trl"] = round(result["sftkit_auto_rows_per_s"] / result["trl_sft_prepare_rows_per_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
