"""Benchmark: `check` + tokenization of N generated conversations.

    .venv/bin/python bench/data_check.py [--rows 100000]

Prints one JSON line. If TRL is installed its dataset preparation is timed on
the same rows; otherwise the equivalent `datasets.map(apply_chat_template)`
baseline is timed when `datasets` is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [
    "the",
    "a",
    "model",
    "data",
    "train",
    "learn",
    "token",
    "answer",
    "question",
    "river",
    "bank",
    "sunny",
    "day",
    "code",
    "write",
    "read",
]


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            msgs = []
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                msgs.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 60)))})
                msgs.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(10, 200)))})
            f.write(json.dumps({"messages": msgs}) + "\n")


def bench_sftkit(path: Path, model: str) -> dict:
    from sftkit.data import load_file
    from sftkit.data.stats import make_renderer, render_all

    renderer = make_renderer(model)
    t0 = time.perf_counter()
    res = load_file(path)
    t1 = time.perf_counter()
    rendered, rejects = render_all(renderer, res.conversations, batch=1024)
    t2 = time.perf_counter()
    assert res.valid + res.rejected == res.total and len(rendered) + len(rejects) == res.valid
    return {"check_s": round(t1 - t0, 2), "tokenize_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "rows_per_s": round(res.total / (t2 - t0)), "tokens": sum(len(r.input_ids) for r in rendered)}  # fmt: skip


def bench_baseline(path: Path, model: str) -> dict | None:
    try:
        import trl  # noqa: F401

        kind = "datasets.map(apply_chat_template) (trl installed; SFTTrainer runs this map)"
    except ImportError:
        kind = "datasets.map(apply_chat_template)"
    try:
        import datasets
    except ImportError:
        return None
    from sftkit.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve(model).path)
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=tempfile.mkdtemp())
    ds = ds.map(lambda ex: {"input_ids": tok.apply_chat_template(ex["messages"], tokenize=True)}, num_proc=1)
    t1 = time.perf_counter()
    return {"kind": kind, "total_s": round(t1 - t0, 2), "rows_per_s": round(len(ds) / (t1 - t0))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.jsonl"
        generate(path, args.rows)
        out = {"rows": args.rows, "cpus": os.cpu_count(), "sftkit": bench_sftkit(path, args.model)}
        if not args.no_baseline:
            out["baseline"] = bench_baseline(path, args.model)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
