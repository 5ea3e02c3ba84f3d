"""Benchmark: `check` + tokenization of N generated conversations (English, no system prompt).

    .venv/bin/python bench/data_check.py [--rows 100000]

Prints one JSON line. The baseline is TRL's own ``SFTTrainer`` dataset preparation on the same
file (``bench/data_prep.py``: ``load_dataset("json")`` + the trainer's ``_prepare_dataset`` with
``SFTConfig`` defaults). ``bench/data_prep.py`` is the fuller comparison (mixed-language rows,
repeats, cache timing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

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

    renderer = make_renderer(model)  # loads the tokenizer and compiles its template (~0.05 s), not timed
    t0 = time.perf_counter()
    res = load_file(path)
    t1 = time.perf_counter()
    rendered, rejects = render_all(renderer, res.conversations)
    t2 = time.perf_counter()
    assert res.valid + res.rejected == res.total and len(rendered) + len(rejects) == res.valid
    return {"check_s": round(t1 - t0, 2), "tokenize_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "rows_per_s": round(res.total / (t2 - t0)), "tokens": sum(len(r.input_ids) for r in rendered),
            "template_rows": renderer.template.stats}  # fmt: skip


def bench_baseline(path: Path) -> dict | None:
    try:
        from data_prep import trl_prepare
    except ImportError:  # trl or datasets not installed
        return None
    trl = trl_prepare(path)
    return {"kind": "trl SFTTrainer._prepare_dataset (SFTConfig defaults, dataset_num_proc=None)",
            "total_s": round(trl["total_s"], 2), "rows_per_s": round(trl["rows"] / trl["total_s"])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.jsonl"
        generate(path, args.rows)
        out = {"rows": args.rows, "cpus": os.cpu_count(), "load": round(os.getloadavg()[0], 2),
               "sftkit": bench_sftkit(path, args.model)}  # fmt: skip
        if not args.no_baseline:
            out["baseline"] = bench_baseline(path)
            if out["baseline"]:
                out["ratio"] = round(out["baseline"]["total_s"] / out["sftkit"]["total_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
