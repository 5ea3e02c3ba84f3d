"""GPU training throughput: `sft train` vs TRL's defaults vs TRL's best available settings, on this CUDA device.

    python bench/gpu_train.py --tokenizer DIR --out results.json     # the measured shape and data (~5 min, H200)
    python bench/gpu_train.py --tiny                                 # the same code path on CPU, tiny shape

Shape, data and settings follow bench/measured/h200_2026-12-04.json (the measurement behind issue 23):
a Llama with SmolLM2-1.7B's shape and random bf16 weights made here (never shipped), the bundled model's
tokenizer and chat template (``--tokenizer``: a saved tokenizer folder, for machines without the bundled
model), 1,500 generated single-turn conversations whose rendered lengths are log-normal around 300 tokens
(30 to ~2,000), cutoff 2,048, loss on the reply only, LoRA r=16 alpha 32 dropout 0.05 on all linear layers,
lr 2e-4, ``adamw_torch_fused``, ~16k real tokens per optimizer step.

Sides (each a fresh process, so its peak memory is its own; a side that fails or times out is reported as such):
* ``sftkit``: ``sft train`` as a user writes it: train.packing, train.bf16, batch 8, everything else default,
  so the per-device plan picks attention, weight dtype and loss head (recorded in the result);
* ``trl``: ``SFTConfig`` defaults (batch 8 padded to the longest row, gradient checkpointing, fp32 weights,
  bf16 autocast where the device has it), max_length 2,048;
* ``trl_best``: TRL's best available here: bf16 weights, ``packing=True`` (bfd) + padding-free, batch 1 x
  16,384 tokens, no gradient checkpointing, Liger when installed (CUDA), flash-attn when installed, else sdpa;
* ``qlora`` (optional, ``--sides``): the sftkit side with ``method.type: qlora``;
* ``sftkit_peft``: the sftkit side with ``train.lora_kernel: peft`` (peft's own LoRA forward instead of the
  fused layer the plan picks): ``fused_lora_speedup`` in the summary is ``sftkit`` over this side.
TRL trains the rows sftkit rendered (``input_ids`` + ``labels``): the same tokens and the same loss.

Measured: real (non-padding) tokens per second over the timed steps (CUDA synchronised), peak memory
(``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS), the loss per step; ``estimate_gb`` is
`sft estimate`'s total for the sftkit side's config and plan on this device; ``mfu`` = sftkit tokens/s x the
estimator's FLOPs per token (4 x parameters for LoRA, + attention at the mean example length) / the device's
dense bf16 peak (its nominal figure when known, else the measured matmul peak). The last stdout line is one
JSON object; ``--out`` also keeps every side's full result as it arrives.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Counting, step_timer, timed_steps, train_counted

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
MEASURED = HERE / "measured" / "h200_2026-12-04.json"
SHAPE = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
         "num_key_value_heads": 32, "tie_word_embeddings": True, "max_position_embeddings": 8192}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": True, "max_position_embeddings": 2048}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR, OPTIM = 2e-4, "adamw_torch_fused"
WORDS = ["the", "model", "learns", "answer", "questions", "about", "data", "tokens", "reply", "river", "code",
         "write", "read", "train", "clear", "short", "because", "result", "你好", "数据", "模型", "训练", "回答"]
SIDES = ("sftkit", "trl", "trl_best", "qlora", "sftkit_peft")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- setup (parent) -----------------------------------------------------------------------------


def generate(path: Path, n: int, median: int, cutoff: int, seed: int = 0) -> None:
    """Single-turn conversations, rendered lengths log-normal around ``median`` tokens (about 1.45 tokens a
    word, a quarter in the question), between 30 and ~cutoff."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            tokens = min(cutoff - 48, max(30, round(rng.lognormvariate(math.log(median), 0.8))))
            words = max(4, round((tokens - 12) / 1.45))
            q = max(2, words // 4)
            row = {"messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=q))},
                                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=words - q))}]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_model(folder: Path, tokenizer_dir: str | None, shape: dict[str, int]) -> None:
    """Random weights from the shape (bf16), the tokenizer beside them: a model folder sft train can load."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sftkit.core.vocab import BUNDLED_ALIAS
    from sftkit.hub import models

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or models.resolve(BUNDLED_ALIAS).path)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 1.7B on a CPU takes minutes
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def rendered_rows(model_dir: Path, data: Path, cutoff: int) -> list[dict[str, list[int]]]:
    from sftkit.data import load_file
    from sftkit.hub import models
    from sftkit.templates.registry import load_template
    from sftkit.templates.render import Renderer

    tok = models.load_tokenizer(model_dir)
    renderer = Renderer(load_template("auto", tok), tok, "assistant", cutoff, "truncate")
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in map(renderer.render, load_file(data).conversations)]


# -- one side (child) ---------------------------------------------------------------------------


def measure(timer: Any, counter: Counting, warmup: int) -> dict[str, Any]:
    import torch

    durations, real, processed = timed_steps(timer, counter, warmup)
    peak = (torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
    return {"tokens_per_s": real / sum(durations), "s_per_step": sum(durations) / len(durations),
            "real_tokens_per_step": real / len(durations), "padding_fraction": 1 - real / processed,
            "peak_gb": peak, "losses": timer.losses}


def sftkit_config(work: Path, args: argparse.Namespace, method: str, lora_kernel: str = "auto") -> Any:
    from sftkit.core.config import RunConfig

    return RunConfig.model_validate({
        "name": f"bench_{method}", "output_dir": str(work / f"run_{method}_{lora_kernel}"),
        "model": {"name_or_path": str(work / "model")},
        "data": {"train": str(work / "train.jsonl"), "cutoff_len": args.cutoff, "val_size": 0},
        "method": {"type": method, **LORA},
        "train": {"max_steps": args.warmup + args.steps, "learning_rate": LR, "optim": OPTIM,
                  "per_device_train_batch_size": args.batch, "packing": True, "bf16": True, "logging_steps": 1,
                  "save_steps": 100_000, "report_to": [], "lora_kernel": lora_kernel},
    })


def run_sftkit(work: Path, args: argparse.Namespace, method: str, lora_kernel: str = "auto") -> dict[str, Any]:
    from rich.console import Console

    from sftkit.estimate import detect_device, estimate_run

    cfg = sftkit_config(work, args, method, lora_kernel)
    timer, counter = train_counted(cfg, Console(stderr=True, quiet=not args.verbose))
    out = measure(timer, counter, args.warmup)
    summary = json.loads((Path(cfg.run_dir()) / "train_summary.json").read_text())
    out["plan"], out["plan_reasons"] = summary["plan"], summary["plan_reasons"]
    dev = detect_device()
    if dev.kind == "cuda":  # the card's size, not what this process left free
        import torch

        dev = replace(dev, memory_gb=torch.cuda.get_device_properties(0).total_memory / 1e9)
    est = estimate_run(cfg, dev, count_data=False, plan=summary["plan"])
    out["estimate_gb"], out["estimate_breakdown"] = est.total_gb, {k: round(v, 3) for k, v in est.breakdown_gb.items()}
    out["flops_per_token"] = _flops_per_token(cfg, summary["plan"], work, args)
    return out


def _flops_per_token(cfg: Any, plan: dict[str, str], work: Path, args: argparse.Namespace) -> float:
    """The estimator's FLOPs per token with attention at the mean example length (each example attends to
    itself only)."""
    from sftkit.estimate import flops_per_token, setup_from_config, shape_for

    lengths = [len(r["input_ids"]) for r in map(json.loads, (work / "rows.jsonl").read_text().splitlines())]
    setup = replace(setup_from_config(cfg, plan), seq_len=round(sum(lengths) / len(lengths)))
    return flops_per_token(shape_for(work / "model" / "config.json"), setup)


def run_trl(work: Path, args: argparse.Namespace, best: bool) -> dict[str, Any]:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    rows = [json.loads(x) for x in (work / "rows.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(work / "model")
    have = {m for m in ("liger_kernel", "flash_attn") if _importable(m)}
    attn = "flash_attention_2" if best and cuda and "flash_attn" in have else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.bfloat16 if best else torch.float32,
                                                 attn_implementation=attn)
    if best:
        extra = {"packing": True, "padding_free": True, "per_device_train_batch_size": 1,
                 "max_length": args.batch * args.cutoff, "gradient_checkpointing": False,
                 "use_liger_kernel": cuda and "liger_kernel" in have, "bf16": cuda or args.tiny}
    else:  # SFTConfig's defaults, with the measurement's max_length; fp32 autocast-free on a CPU as TRL's CPU run
        extra = {"max_length": args.cutoff, "per_device_train_batch_size": args.batch, "bf16": cuda}
    sft_args = SFTConfig(output_dir=str(work / ("trl_best" if best else "trl")), use_cpu=not cuda,
                         max_steps=args.warmup + args.steps, learning_rate=LR, optim=OPTIM, logging_steps=1,
                         save_strategy="no", report_to="none", disable_tqdm=True, seed=0, **extra)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok, peft_config=lora)
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    out = measure(timer, counter, args.warmup)
    out["settings"] = {"attn_implementation": attn, **{k: v for k, v in extra.items() if k != "bf16"},
                       "bf16_autocast": extra["bf16"], "weights": "bfloat16" if best else "float32"}
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def run_side(side: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    if side in ("sftkit", "qlora", "sftkit_peft"):
        kernel = "peft" if side == "sftkit_peft" else "auto"
        return run_sftkit(work, args, "qlora" if side == "qlora" else "lora", kernel)
    return run_trl(work, args, best=side == "trl_best")


def child(side: str, work: Path, args: argparse.Namespace) -> None:
    """One side in this (fresh) process; prints its measurement as JSON."""
    print("RESULT " + json.dumps(run_side(side, work, args)), flush=True)


# -- orchestration (parent) ---------------------------------------------------------------------


def run_child(side: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    if args.inprocess:  # the test's dry run: the same functions without a process per side (peaks are shared)
        return run_side(side, work, args)
    left = args.deadline - time.monotonic()
    if left < 30:
        return {"error": f"skipped: --budget {args.budget} s spent"}
    limit = min(args.timeout, left)
    cmd = [sys.executable, __file__, "--child", side, "--work", str(work), *args.passthrough]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE,
                              text=True, check=False, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {limit:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-12:]
        return {"error": f"exit {proc.returncode}", "stderr_tail": tail}
    return json.loads(lines[-1].removeprefix("RESULT "))


def device_info(tiny: bool) -> dict[str, Any]:
    """The device's name, its nominal dense bf16 peak (the estimator's table) and a measured matmul peak."""
    import torch

    from sftkit.estimate import detect_device

    cuda = torch.cuda.is_available()
    n = 8192 if cuda else 1024
    dev = "cuda" if cuda else "cpu"
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device=dev) for _ in range(2))
    best = math.inf
    for _ in range(3 if tiny else 10):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    measured = 2 * n**3 / best / 1e12
    known = detect_device() if cuda else None
    nominal = known.tflops if known is not None and known.tflops != 100.0 else None
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {"device": name, "nominal_tflops": nominal, "matmul_tflops": round(measured, 2),
            "versions": _versions()}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "trl", "liger-kernel", "flash-attn", "bitsandbytes"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    import torch

    out["cuda"] = torch.version.cuda or "none"
    return out


def summary(results: dict[str, dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    def get(side: str, key: str) -> Any:
        return results.get(side, {}).get(key)

    x, y, z = get("sftkit", "tokens_per_s"), get("trl", "tokens_per_s"), get("trl_best", "tokens_per_s")
    unfused = get("sftkit_peft", "tokens_per_s")
    peak_tflops = info["nominal_tflops"] or info["matmul_tflops"]
    fpt = get("sftkit", "flops_per_token")
    out = {
        "sftkit_tokens_per_s": x, "trl_tokens_per_s": y, "trl_best_tokens_per_s": z,
        "ratio": x / y if x and y else None, "ratio_best": x / z if x and z else None,
        "sftkit_peak_gb": get("sftkit", "peak_gb"), "estimate_gb": get("sftkit", "estimate_gb"),
        "mfu": x * fpt / (peak_tflops * 1e12) if x and fpt else None, "device": info["device"],
        "qlora_peak_gb": get("qlora", "peak_gb"), "trl_peak_gb": get("trl", "peak_gb"),
        "trl_best_peak_gb": get("trl_best", "peak_gb"), "plan": get("sftkit", "plan"),
        "sftkit_peft_tokens_per_s": unfused, "fused_lora_speedup": x / unfused if x and unfused else None,
        "sftkit_peft_peak_gb": get("sftkit_peft", "peak_gb"),
        "errors": {s: r["error"] for s, r in results.items() if "error" in r} or None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def prepare(work: Path, args: argparse.Namespace) -> None:
    shape = TINY if args.tiny else SHAPE
    if not (work / "model" / "config.json").is_file():
        log(f"making the model ({'tiny' if args.tiny else '1.7B'} shape, random bf16 weights) in {work / 'model'}")
        make_model(work / "model", args.tokenizer, shape)
    generate(work / "train.jsonl", args.rows, args.median, args.cutoff)
    rows = rendered_rows(work / "model", work / "train.jsonl", args.cutoff)
    (work / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = sorted(len(r["input_ids"]) for r in rows)
    log(f"{len(rows)} rows, tokens min {lengths[0]} median {lengths[len(lengths) // 2]} "
        f"mean {sum(lengths) / len(lengths):.0f} max {lengths[-1]}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 64, on CPU: a dry run in seconds")
    ap.add_argument("--sides", default="sftkit,trl_best,trl,qlora,sftkit_peft",
                    help=f"comma-separated, of {', '.join(SIDES)}")
    ap.add_argument("--tokenizer", help="a saved tokenizer folder (default: the bundled model's)")
    ap.add_argument("--work", type=Path, help="model, data and run folders (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="write every side's full result here as it arrives")
    ap.add_argument("--steps", type=int, help="timed optimizer steps (default 10; tiny 2)")
    ap.add_argument("--warmup", type=int, help="warm-up steps (default 2; tiny 1)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per side at most")
    ap.add_argument("--budget", type=int, default=540, help="seconds for the whole run: a side that cannot start "
                    "with 30 s left is skipped (and reported), so the results file is complete before any outer limit")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on a CPU")
    ap.add_argument("--verbose", action="store_true", help="show the runs' own output")
    ap.add_argument("--inprocess", action="store_true", help="run the sides in this process (dry runs; the peak "
                    "memory figures are then not each side's own)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.rows, args.median = (48, 60) if tiny else (1500, 300)
    args.cutoff, args.batch = (256, 2) if tiny else (2048, 8)
    args.passthrough = [*(["--tiny"] if tiny else []), "--steps", str(args.steps), "--warmup", str(args.warmup),
                        "--threads", str(args.threads), *(["--verbose"] if args.verbose else [])]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse(argv)
    args.deadline = time.monotonic() + args.budget
    if args.child:
        child(args.child, args.work, args)
        return None
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise SystemExit(f"--sides: unknown {sorted(unknown)}; choose from {', '.join(SIDES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="sft_gpu_train_"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = work
    prepare(work, args)
    info = device_info(args.tiny)
    log(f"device {info['device']}: matmul {info['matmul_tflops']} TFLOP/s bf16 (nominal {info['nominal_tflops']})")
    results: dict[str, dict[str, Any]] = {}
    for side in sides:
        log(f"{side} ...")
        results[side] = r = run_child(side, work, args)
        log(f"  {side}: " + (f"{r['tokens_per_s']:,.0f} real tokens/s, peak {r['peak_gb']:.2f} GB, "
                             f"losses {r['losses'][:3]}...{r['losses'][-2:]}" if "error" not in r else r["error"]))
        if args.out:
            args.out.write_text(json.dumps({"info": info, "results": results,
                                            "summary": summary(results, info)}, indent=1))
    line = summary(results, info)
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
