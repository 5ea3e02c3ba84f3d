"""QLoRA against bf16 LoRA at the same batch, on this CPU (the evidence a machine without a GPU can give).

    .venv/bin/python bench/qlora_memory.py            # the bundled model, one packed batch of 2 x 1,024 tokens

Each side builds the model exactly as `sft train` does (``recipe._load_base`` with the per-device plan,
``methods.attach``, the loss head), then runs one forward and backward under bf16 autocast on the same
packed batch, in a fresh process:

* ``lora_bf16``: LoRA r=16 on all linear layers, ``model.dtype: bfloat16``;
* ``qlora``: ``method.type: qlora`` as sftkit now trains it (``model.dtype: auto`` -> bf16 non-4-bit weights);
* ``qlora_upcast``: the same after peft's ``prepare_model_for_kbit_training`` (what sftkit called before
  issue 23: every non-4-bit weight upcast to fp32).

Reported per side: ``weights_mb`` (parameter and quantisation-state storage), ``saved_mb`` (the tensors
autograd keeps for the backward pass, counted once per storage through ``saved_tensors_hooks``),
``held_mb`` = their sum (what is alive at the start of the backward pass, before the head's transient
buffers), ``peak_rss_mb`` (the process; includes loading, glibc's retained blocks and the Python stack, so it
is noisy and not what a GPU would show), ``loss``, and the estimator's ``estimate_mb`` for the same setup on
the CPU (without the process baseline). One JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIDES = ("lora_bf16", "qlora", "qlora_upcast")


def _batch(tokenizer: Any, rows: int, length: int) -> dict[str, Any]:
    import torch

    words = ["the", "model", "learns", "to", "answer", "questions", "about", "data",
             "你好", "数据", "模型", "训练", "回答"]
    g = torch.Generator().manual_seed(0)
    ids, pos = [], []
    for _ in range(rows):
        row: list[int] = []
        p: list[int] = []
        while len(row) < length:
            n = int(torch.randint(40, 400, (1,), generator=g))
            text = " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g))
            piece = tokenizer(text)["input_ids"][: length - len(row)]
            row += piece
            p += list(range(len(piece)))
        ids.append(row)
        pos.append(p)
    t = torch.tensor(ids)
    labels = t.clone()
    labels[:, : length // 4] = -100  # a prompt share that trains nothing
    return {"input_ids": t, "position_ids": torch.tensor(pos), "labels": labels}


def side(name: str, rows: int, length: int) -> dict[str, Any]:
    import torch

    from sftkit.core.config import RunConfig
    from sftkit.hub import models
    from sftkit.hub.device import detect
    from sftkit.train import losshead
    from sftkit.train import plan as planning
    from sftkit.train.methods import attach
    from sftkit.train.recipe import _load_base

    cfg = RunConfig.model_validate({
        "model": {"dtype": "bfloat16" if name == "lora_bf16" else "auto"},
        "data": {"train": "unused.jsonl", "cutoff_len": length},
        "method": {"type": "lora" if name == "lora_bf16" else "qlora", "r": 16, "alpha": 32},
        "train": {"bf16": True, "packing": True, "per_device_train_batch_size": rows}})
    path = models.resolve(cfg.model.name_or_path).path
    tok = models.load_tokenizer(path)
    batch = _batch(tok, rows, length)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    plan = planning.plan(cfg, detect(), planning.model_config_of(cfg))
    model = _load_base(cfg, path, plan)
    model.config.use_cache = False
    if name == "qlora_upcast":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = attach(model, cfg.method)
    losshead.install(model, backend="chunked")
    model.train()
    weights = _storage_bytes(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    est = _estimate(cfg, plan, "float32" if name == "qlora_upcast" else None)
    return {"weights_mb": weights / 2**20, "saved_mb": sum(seen.values()) / 2**20,
            "held_mb": (weights + sum(seen.values())) / 2**20, "loss": round(loss.item(), 5),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "baseline_rss_mb": base_rss,
            "estimate_mb": est, "seconds": round(time.perf_counter() - t0, 1), "plan": plan.values()}


def _storage_bytes(model: Any) -> int:
    """Parameters and buffers, plus bitsandbytes' absmax / codebook tensors (quantisation state)."""
    import torch

    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        qs = getattr(t, "quant_state", None)
        for part in vars(qs).values() if qs is not None else ():
            for x in (part, *vars(part).values()) if hasattr(part, "__dict__") else (part,):
                if isinstance(x, torch.Tensor):
                    seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    return sum(seen.values())


def _estimate(cfg: Any, plan: Any, weight_dtype: str | None) -> float:
    from dataclasses import replace

    from sftkit.estimate import estimate, setup_from_config, shape_for
    from sftkit.estimate.device import Device

    setup = setup_from_config(cfg, {**plan.values(), **({"dtype": weight_dtype} if weight_dtype else {})})
    est = estimate(shape_for(cfg.model.name_or_path), replace(setup, device="cpu"),
                   Device("cpu", 1e3, 1.0, kind="cpu", overhead_gb=0.0))
    return (est.total_gb - est.breakdown_gb["allocator_retention"]) * 1e9 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(side(args.child, args.rows, args.length)), flush=True)
        return
    out: dict[str, Any] = {}
    for name in SIDES:
        cmd = [sys.executable, __file__, "--child", name, "--rows", str(args.rows), "--length", str(args.length)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not lines:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        out[name] = {k: round(v, 1) if isinstance(v, float) and k != "loss" else v
                     for k, v in json.loads(lines[-1][7:]).items()}
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    out["qlora_held_le_lora"] = out["qlora"]["held_mb"] <= out["lora_bf16"]["held_mb"]
    out["rows"], out["length"] = args.rows, args.length
    print(json.dumps(out))


if __name__ == "__main__":
    main()
