"""Throughput of render + tokenize + mask vs TRL's SFTTrainer dataset preparation.

Usage: .venv/bin/python bench/templates_render.py [--rows 100000] [--trl-rows 20000]

Both sides get the same generated conversations and the bundled SmolLM2
tokenizer, with a 1,024-token cutoff. sftkit: ``Renderer.render_many`` (the
tokenizer's own template, and the shipped ``chatml`` JSON template). TRL: its
``SFTTrainer`` preparation as the constructor runs it (``SFTConfig`` defaults:
chat template + tokenization, labels, truncation through ``datasets.map``, one
process), on a subset when ``--trl-rows`` is smaller. No file reading on either
side (``bench/data_prep.py`` times the whole path). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

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
    from sftkit.core.conversation import Conversation
    from sftkit.templates import Renderer, load_template

    r = Renderer(load_template(template, tok), tok, cutoff_len=1024)  # TRL's default max_length
    t0 = time.perf_counter()
    out = r.render_many([Conversation.from_messages(m) for m in rows])
    assert sum(1 for x in out if x.n_trainable > 0) == len(rows)  # type: ignore[union-attr]
    return len(rows) / (time.perf_counter() - t0)


def bench_trl(rows: list[list[dict[str, str]]]) -> float:
    """TRL's ``SFTTrainer`` preparation as its constructor runs it (``bench/data_prep.py``),
    timing only ``_prepare_dataset`` (not reading the file)."""
    from data_prep import trl_prepare

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        path.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in rows), "utf-8")
        trl = trl_prepare(path)
    assert trl["rows"] == len(rows)
    return len(rows) / trl["prepare_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--trl-rows", type=int, default=100_000)
    a = ap.parse_args()

    from sftkit.core.vocab import BUNDLED_ALIAS
    from sftkit.hub.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve(BUNDLED_ALIAS).path)
    rows = conversations(a.rows)
    result = {
        "bench": "templates_render",
        "rows": a.rows,
        "sftkit_auto_rows_per_s": round(bench_sftkit(tok, rows, "auto")),
        "sftkit_json_chatml_rows_per_s": round(bench_sftkit(tok, rows, "chatml")),
        "trl_rows": min(a.trl_rows, a.rows),
        "trl_sft_prepare_rows_per_s": round(bench_trl(rows[: a.trl_rows])),
        "cpu_count": os.cpu_count(),
    }
    result["speedup_auto_vs_trl"] = round(result["sftkit_auto_rows_per_s"] / result["trl_sft_prepare_rows_per_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
