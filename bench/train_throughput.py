"""Training throughput: TRL ``SFTTrainer`` (defaults, then its best CPU settings) vs ``sft train``.

    .venv/bin/python bench/train_throughput.py --json          # 2 repeats, 1 warm-up + 3 timed steps each
    .venv/bin/python bench/train_throughput.py --repeat 1 --steps 3 --only sftkit

One process runs the trio, interleaved per repeat, on the same everything:

* model: the bundled SmolLM2-135M-Instruct, fp32 weights, LoRA r=8 alpha=16 dropout=0.05 on all linear
  layers; optimizer ``adamw_torch_fused`` (TRL's default), learning rate 2e-4, torch threads ``--threads``;
* data: 600 generated conversations (one user turn, one reply) whose rendered lengths follow a long tail
  from about 40 to 1,024 tokens (log-normal; measured median 195, mean 261), rendered once with the model's own chat
  template by sftkit's renderer; ``max_length`` / ``cutoff_len`` 1,024;
* loss: per-token cross-entropy over the assistant tokens only, averaged over the optimizer step, no
  attention across examples, on all three sides. TRL cannot mask this tokenizer's template itself
  (``assistant_only_loss`` refuses it), so it gets the same rendered ``input_ids`` and ``labels``;
* tokens per optimizer step: about 2,000 real tokens: 8 unpadded conversations (TRL's default batch) or
  2 packed rows of up to 1,024 tokens.

Sides:
* ``trl``: ``SFTConfig`` defaults (``use_cpu=True``, which a CPU needs; fp32 as the reference run did,
  ``bf16=False``): batch 8, padding to the longest row, gradient checkpointing on (TRL's default).
* ``trl_best``: the same plus ``bf16=True``, ``packing=True`` (its ``bfd`` strategy, padding-free rows) and
  ``gradient_checkpointing=False`` (sftkit runs without it too: a fair best).
* ``sftkit``: ``sft train`` (``sftkit.train.recipe.run``, the whole command in-process) with ``train.packing``,
  ``train.bf16`` and no gradient checkpointing; everything else is the per-device plan's CPU default
  (``sftkit.train.plan``): segment attention, the chunked loss head (``sftkit.train.losshead``: prompt tokens
  skip the head, no full logits), fast LoRA dropout (``sftkit.train.dropout``).

Timing: the wall time between consecutive optimizer steps (data loading, forward, backward, optimizer),
warm-up steps excluded; real tokens (not padding) counted from the rows each collator receives; the
median tokens/s over repeats is reported. Each run is a fresh child process (so peak RSS, ``ru_maxrss``,
is that run's own); the parent only generates the data and collects the results.
``sftkit_gflops``: 4 x (linear-layer weights, lm_head included) FLOPs per real token (forward plus the
input gradients of frozen weights; attention and LoRA not counted) x tokens/s. The last stdout line is one
JSON object (with ``--json`` the only one; without it a table of the sides comes first).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Counting, step_timer, timed_steps, train_counted

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = "smollm2-135m-instruct"
CUTOFF = 1024
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
LR = 2e-4
OPTIM = "adamw_torch_fused"
# fmt: off
WORDS = ["the", "model", "learns", "answer", "questions", "about", "data", "tokens", "reply", "river", "code",
         "write", "read", "train", "clear", "short", "because", "result", "你好", "数据", "模型", "训练", "回答"]
# fmt: on


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Conversations with a long-tailed length: about 1.45 tokens per word, a quarter of it in the question."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            tokens = min(990, max(20, round(rng.lognormvariate(math.log(150), 0.8))))
            words = max(4, round((tokens - 12) / 1.45))  # the template adds about 12 tokens
            q = max(2, words // 4)
            row = {"messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=q))},
                                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=words - q))}]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def measure(timer: Any, counter: Counting, warmup: int) -> dict[str, float]:
    durations, real, processed = timed_steps(timer, counter, warmup)
    return {"tokens_per_s": real / sum(durations), "padding_fraction": 1 - real / processed,
            "real_tokens_per_step": real / len(durations), "seconds_per_step": sum(durations) / len(durations),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB


def rendered_rows(data: Path) -> list[dict[str, list[int]]]:
    from sftkit.data import load_file
    from sftkit.hub import models
    from sftkit.templates.registry import load_template
    from sftkit.templates.render import Renderer

    tok = models.load_tokenizer(models.resolve(MODEL).path)
    renderer = Renderer(load_template("auto", tok), tok, "assistant", CUTOFF, "truncate")
    convs = load_file(data).conversations
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in (renderer.render(c) for c in convs)]


def run_trl(rows: list[dict[str, list[int]]], best: bool, steps: int, warmup: int, out: Path) -> dict[str, float]:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sftkit.hub import models

    path = models.resolve(MODEL).path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    extra = ({"bf16": True, "packing": True, "per_device_train_batch_size": 2, "gradient_checkpointing": False}
             if best else {"bf16": False})
    args = SFTConfig(output_dir=str(out), use_cpu=True, max_length=CUTOFF, max_steps=steps, learning_rate=LR,
                     optim=OPTIM, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                     seed=0, **extra)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok, peft_config=lora)
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    return measure(timer, counter, warmup)


def run_sftkit(data: Path, steps: int, warmup: int, out: Path) -> dict[str, float]:
    from rich.console import Console

    from sftkit.core.config import RunConfig
    cfg = RunConfig.model_validate({
        "name": "throughput", "output_dir": str(out),
        "model": {"name_or_path": MODEL},
        "data": {"train": str(data), "cutoff_len": CUTOFF, "val_size": 0},
        "method": {"type": "lora", **LORA},
        "train": {"max_steps": steps, "learning_rate": LR, "optim": OPTIM, "per_device_train_batch_size": 2,
                  "gradient_accumulation_steps": 1, "packing": True, "bf16": True, "logging_steps": 1,
                  "save_steps": 10_000, "report_to": []},
    })
    timer, counter = train_counted(cfg, Console(stderr=True, quiet=True))
    return measure(timer, counter, warmup)


def matmul_peak_gflops_bf16(n: int = 3072, repeat: int = 12) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def linear_weights() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from sftkit.hub import models

    model = AutoModelForCausalLM.from_pretrained(models.resolve(MODEL).path)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def child(side: str, data: Path, steps: int, warmup: int, out: Path, threads: int) -> None:
    """One run of one side in this (fresh) process; prints its measurement as JSON."""
    import torch

    torch.set_num_threads(threads)
    r = (run_sftkit(data, steps, warmup, out) if side == "sftkit"
         else run_trl(rendered_rows(data), side == "trl_best", steps, warmup, out))
    print("RESULT " + json.dumps(r), flush=True)


def run_child(side: str, data: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", side, "--data", str(data), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--out", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if not args.verbose else None,
                          text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{side} run failed (exit {proc.returncode}); re-run with --verbose to see why")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="trl,trl_best,sftkit", help="comma-separated sides to run")
    ap.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    ap.add_argument("--verbose", action="store_true", help="show the runs' own output")
    ap.add_argument("--json", action="store_true", help="stdout: only the JSON line (no table)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.data, args.warmup + args.steps, args.warmup, args.out, args.threads)

    import torch

    torch.set_num_threads(args.threads)
    sides = args.only.split(",")
    work = args.out or Path(tempfile.mkdtemp(prefix="sft_throughput_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "train.jsonl"
    generate(data, args.rows)
    rows = rendered_rows(data)
    lengths = sorted(len(r["input_ids"]) for r in rows)
    log(f"{len(rows)} rows, tokens min {lengths[0]} median {lengths[len(lengths) // 2]} "
        f"mean {sum(lengths) / len(lengths):.0f} max {lengths[-1]}")
    peak, flops_per_token = matmul_peak_gflops_bf16(), 4 * linear_weights()
    log(f"bf16 matmul peak {peak:.0f} GFLOP/s; {flops_per_token / 1e6:.0f} MFLOP per real token")
    results: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for rep in range(args.repeat):
        for side in sides:
            log(f"repeat {rep + 1}/{args.repeat}: {side}")
            r = run_child(side, data, args, work / f"{side}_{rep}")
            log(f"  {side}: {r['tokens_per_s']:.1f} real tokens/s, {r['seconds_per_step']:.1f} s/step, "
                f"padding {r['padding_fraction']:.1%}, peak RSS {r['peak_rss_mb']:.0f} MB")
            results[side].append(r)
        line = summary(results, args, peak, flops_per_token, len(rows))
        log(f"after {rep + 1} repeat(s): {line}")  # a killed run still leaves its figures so far
    if not args.json:
        print(table(json.loads(line)))
    print(line)


def table(r: dict[str, Any]) -> str:
    rows = [f"{'side':<10} {'tokens/s':>9} {'padding':>8} {'peak RSS MB':>12}"]
    for side in ("trl", "trl_best", "sftkit"):
        if r.get(f"{side}_tokens_per_s"):
            rows.append(f"{side:<10} {r[f'{side}_tokens_per_s']:>9.1f} {r[f'{side}_padding_fraction']:>8.1%} "
                        f"{r[f'{side}_peak_rss_mb']:>12.0f}")
    rows.append(f"ratio {r['ratio']}, ratio_best {r['ratio_best']}")
    return "\n".join(rows)


def summary(results: dict[str, list[dict[str, float]]], args: argparse.Namespace, peak: float,
            flops_per_token: int, n_rows: int) -> str:
    def med(side: str, key: str) -> float | None:
        return statistics.median(r[key] for r in results[side]) if results.get(side) else None

    x, y, z = med("sftkit", "tokens_per_s"), med("trl", "tokens_per_s"), med("trl_best", "tokens_per_s")
    report: dict[str, Any] = {
        "sftkit_tokens_per_s": x, "trl_tokens_per_s": y, "ratio": x / y if x and y else None,
        "trl_best_tokens_per_s": z, "ratio_best": x / z if x and z else None,
        "sftkit_padding_fraction": med("sftkit", "padding_fraction"),
        "trl_padding_fraction": med("trl", "padding_fraction"),
        "trl_best_padding_fraction": med("trl_best", "padding_fraction"),
        "sftkit_peak_rss_mb": med("sftkit", "peak_rss_mb"), "trl_peak_rss_mb": med("trl", "peak_rss_mb"),
        "trl_best_peak_rss_mb": med("trl_best", "peak_rss_mb"),
        "sftkit_gflops": x * flops_per_token / 1e9 if x else None,
        "matmul_peak_gflops_bf16": peak,
        "real_tokens_per_step": {s: med(s, "real_tokens_per_step") for s in results},
        "runs": {s: [round(r["tokens_per_s"], 1) for r in results[s]] for s in results},
        "rows": n_rows, "threads": args.threads, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "repeats": len(next(iter(results.values()))),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    return json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()})


if __name__ == "__main__":
    main()
