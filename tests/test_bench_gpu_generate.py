"""``bench/gpu_generate.py --tiny`` runs on the CPU in seconds and prints its JSON contract last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_generate.py"


def test_tiny_bench_prints_the_contract():
    p = subprocess.run([sys.executable, str(BENCH), "--tiny", "--no-vllm"], capture_output=True, text=True,
                       timeout=300, check=False, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"device", "sftkit_tokens_per_s", "sequential_tokens_per_s", "ratio", "identical"} <= out.keys()
    assert out["device"] == "cpu" and out["dtype"] == "float32"
    assert out["identical"] is True  # greedy: batched output equals transformers' one-at-a-time generate
    assert out["completion_tokens"] > 0
    assert out["sftkit_tokens_per_s"] > 0 and out["sequential_tokens_per_s"] > 0
