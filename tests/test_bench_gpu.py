"""bench/gpu_train.py --tiny: the GPU benchmark's code path (model made from a shape, generated data, the
sftkit / TRL / TRL-best / QLoRA sides, the estimate, the summary line) dry-runs on this CPU, so argument and
API errors are caught before any GPU time is spent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_train.py"
KEYS = {"sftkit_tokens_per_s", "trl_tokens_per_s", "trl_best_tokens_per_s", "ratio", "ratio_best", "sftkit_peak_gb",
        "estimate_gb", "mfu", "device"}


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_train_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_dry_run_prints_the_summary_line(tmp_path, tokenizer, capsys):
    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed")
    tok = tmp_path / "tok"
    tokenizer.save_pretrained(tok)
    sides = "sftkit,trl,trl_best,sftkit_peft" + (",qlora" if importlib.util.find_spec("bitsandbytes") else "")
    line = _bench().main(["--tiny", "--inprocess", "--sides", sides, "--tokenizer", str(tok),
                          "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.json")])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == line and set(line) >= KEYS and line["errors"] is None
    assert line["device"] == "cpu" and line["sftkit_tokens_per_s"] > 0 and line["ratio"] > 0
    assert line["estimate_gb"] > 0 and 0 < line["mfu"] < 1
    assert set(line["plan"]) == {"attn_implementation", "dtype", "loss_head", "packing", "lora_kernel"}
    assert line["plan"]["lora_kernel"] == "fused" and line["fused_lora_speedup"] > 0
    assert line["sftkit_peft_tokens_per_s"] > 0 and line["sftkit_peft_peak_gb"] > 0
    full = json.loads((tmp_path / "r.json").read_text())["results"]
    best = full["trl_best"]["settings"]
    assert best["packing"] is True and best["gradient_checkpointing"] is False
    assert full["sftkit"]["padding_fraction"] < full["trl"]["padding_fraction"]
    assert all(len(r["losses"]) == 3 for r in full.values())  # 1 warm-up + 2 timed steps, each logged
