"""Plain lm_head + cross-entropy vs sftkit's chunked loss head: time and peak memory, forward + backward.

Usage: .venv/bin/python bench/loss_head.py [--tokens 8192] [--vocab 49152] [--hidden 576]
                                           [--trained-frac 1.0] [--frozen-head] [--chunk N] [--reps 2]

Defaults are SmolLM2's head (V=49,152, H=576) on 8,192 tokens. "plain" is what a transformers causal LM
does: logits for every row in the compute dtype, ``.float()``, ``F.cross_entropy``. "chunked" is
``linear_cross_entropy`` (gradients formed in the forward), "chunked_recompute" the variant that redoes the
chunks in the backward. ``--trained-frac`` < 1 masks a share of the rows, as SFT prompt masking does: plain
still computes them, chunked skips them. Each (head, dtype) runs in its own process so that its peak RSS
(``ru_maxrss`` above the RSS once inputs exist) is its own; time is the best of ``--reps`` runs after one
warm-up. On CUDA, peak is torch's max allocated above the inputs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

HEADS = ("plain", "chunked", "chunked_recompute")
DTYPES = ("bfloat16", "float32")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _inputs(args, dtype, device):
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=g).to(device, dtype).requires_grad_()
    weight = (0.02 * torch.randn(args.vocab, args.hidden, generator=g)).to(device, dtype)
    weight.requires_grad_(not args.frozen_head)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    labels[torch.rand(args.tokens, generator=g) >= args.trained_frac] = -100
    return hidden, weight, labels.to(device)


def _step(head, hidden, weight, labels, chunk):
    import torch.nn.functional as F

    from sftkit.train.losshead import linear_cross_entropy

    if head == "plain":
        loss = F.cross_entropy(F.linear(hidden, weight).float(), labels)
    else:
        loss = linear_cross_entropy(hidden, weight, labels, reduction="mean", chunk_tokens=chunk,
                                    recompute=head == "chunked_recompute", backend="chunked")
    loss.backward()
    hidden.grad = weight.grad = None
    return float(loss)


def run_one(args) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hidden, weight, labels = _inputs(args, getattr(torch, args.dtype), device)
    base = torch.cuda.memory_allocated() if device == "cuda" else _rss_mb()
    loss = _step(args.head, hidden, weight, labels, args.chunk)  # warm-up
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        _step(args.head, hidden, weight, labels, args.chunk)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"head": args.head, "dtype": args.dtype, "device": device, "seconds": round(min(times), 3),
            "peak_extra_mb": round(peak), "loss": round(loss, 5)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--trained-frac", type=float, default=1.0)
    p.add_argument("--frozen-head", action="store_true", help="lm_head frozen (LoRA): no weight gradient")
    p.add_argument("--chunk", type=int, default=None, help="rows per chunk (default: sftkit's choice)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--head", choices=HEADS, help=argparse.SUPPRESS)  # one measurement, in a child process
    p.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.head:
        print(json.dumps(run_one(args)))
        return
    from sftkit.train.losshead import default_chunk_tokens

    rows = []
    for dtype in DTYPES:
        for head in HEADS:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--head", head, "--dtype", dtype],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    speed = {d: {r["head"]: r for r in rows if r["dtype"] == d} for d in DTYPES}
    ratios = {d: {f"{head}_{what}_vs_plain": round(s[head][key] / max(1e-9, s["plain"][key]), 3)
                  for head in HEADS[1:] for what, key in (("time", "seconds"), ("peak", "peak_extra_mb"))}
              for d, s in speed.items()}
    print(json.dumps({"bench": "loss_head", "tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden,
                      "trained_frac": args.trained_frac, "frozen_head": args.frozen_head,
                      "chunk": args.chunk or default_chunk_tokens(args.vocab), "results": rows,
                      "ratios": ratios}))


if __name__ == "__main__":
    main()
