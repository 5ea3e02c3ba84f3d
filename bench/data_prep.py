"""Data preparation throughput: sftkit vs TRL's ``SFTTrainer`` preparation, same rows, same tokenizer.

    .venv/bin/python bench/data_prep.py                # 100,000 rows, 1 repeat
    .venv/bin/python bench/data_prep.py --repeat 3 --trl-num-proc 2

Both sides start from the same generated JSONL file (``{"messages": [...]}`` rows: 1-3 turns,
30 % with a system prompt, English with about one word in eight Chinese or an emoji) and the
bundled SmolLM2 tokenizer (its own Jinja chat template), with the same 1,024-token cutoff (TRL's
default ``max_length``).

* sftkit: ``load_file`` (read + validate, what ``sft data check`` does), then ``render_all``
  (render, tokenize, assistant-only labels) with the template loaded as ``sft train`` does.
* TRL: ``datasets.load_dataset("json")`` (read), then the trainer's own preparation: an
  ``SFTTrainer`` built on a tiny model with ``SFTConfig`` defaults (``dataset_num_proc=None``:
  one process), timing only its ``_prepare_dataset`` call (chat template + tokenize, labels,
  truncation, filter: four ``datasets.map``/``filter`` passes), with a fresh datasets cache.

Both sides run in this one invocation, alternating order per repeat; the figures are each side's
fastest repeat. Then ``sft train``'s whole preparation (``dataset.prepare``) is timed twice with an
empty prepared-data cache: cold, and warm (``--no-cache`` skips it). Prints one JSON line (progress
goes to stderr).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# fmt: off
ENGLISH = [
    "the", "model", "learns", "to", "answer", "questions", "about", "data", "templates", "and", "tokens", "with",
    "a", "clear", "short", "reply", "river", "bank", "code", "write", "read", "train",
]
OTHER = ["你好", "世界", "数据", "模型", "训练", "回答", "问题", "😊", "🚀", "👍🏽"]  # 2-6 tokens each
# fmt: on
WORDS = ENGLISH + OTHER
WEIGHTS = [1.0] * len(ENGLISH) + [0.3] * len(OTHER)  # about 1 word in 8 is Chinese or an emoji
CUTOFF = 1024  # TRL's default max_length; sftkit's default cutoff_len


def generate(path: Path, n: int, seed: int = 0) -> None:
    """``n`` conversations as ``messages`` JSONL rows (deterministic for a seed)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choices(WORDS, WEIGHTS, k=rng.randint(lo, hi)))

    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            msgs = [{"role": "system", "content": text(3, 12)}] if rng.random() < 0.3 else []
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                msgs += [{"role": "user", "content": text(5, 60)}, {"role": "assistant", "content": text(10, 200)}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def log(msg: str) -> None:
    print(f"[data_prep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tokenizer() -> Any:
    from sftkit.core.vocab import BUNDLED_ALIAS
    from sftkit.hub.models import load_tokenizer, resolve

    return load_tokenizer(resolve(BUNDLED_ALIAS).path)


def sftkit_prepare(path: Path, tok: Any, template: str = "auto") -> dict[str, Any]:
    """Read + validate + render + tokenize + mask, as ``sft data check`` and ``sft train`` do."""
    from sftkit.data import load_file
    from sftkit.data.stats import render_all
    from sftkit.templates import Renderer, load_template

    t0 = time.perf_counter()
    res = load_file(path)
    t1 = time.perf_counter()
    tmpl = load_template(template, tok)  # compiling the Jinja template is part of the work timed
    rendered, rejects = render_all(Renderer(tmpl, tok, cutoff_len=CUTOFF), res.conversations)
    t2 = time.perf_counter()
    assert res.valid == res.total and not rejects, (res.rejected, rejects[:3])
    return {
        "check_s": t1 - t0,
        "render_s": t2 - t1,
        "total_s": t2 - t0,
        "rows": res.total,
        "template_rows": dict(getattr(tmpl, "stats", {})),
        "rendered": rendered,
    }


def cache_cold_warm(path: Path, tok: Any) -> dict[str, Any]:
    """``sft train``'s whole preparation (``dataset.prepare``: also lint, duplicate counts, the
    report) run twice with an empty prepared-data cache: cold (prepares, stores) and warm (loads)."""
    from sftkit.core.config import DataConfig
    from sftkit.data.prepare import prepare
    from sftkit.templates import Renderer, load_template

    old = os.environ.get("SFTKIT_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["SFTKIT_HOME"] = home
        try:
            data = DataConfig(train=[path], cutoff_len=CUTOFF)
            times, status = [], []
            for _ in range(2):
                t = time.perf_counter()
                r = Renderer(load_template("auto", tok), tok, data.mask, data.cutoff_len, data.overflow)
                out = prepare(data, r, seed=0)
                times.append(round(time.perf_counter() - t, 2))
                status.append(out.report["cache"]["status"])
            size = sum(f.stat().st_size for f in Path(home, "prepared").glob("*.pkl"))
        finally:
            os.environ.pop("SFTKIT_HOME") if old is None else os.environ.__setitem__("SFTKIT_HOME", old)
    assert status == ["stored", "hit"], status
    return {"prepare_cold_s": times[0], "prepare_warm_s": times[1], "cache_entry_mb": round(size / 2**20)}


def tiny_model(tok: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    return LlamaForCausalLM(cfg)


def trl_prepare(path: Path, num_proc: int | None = None) -> dict[str, Any]:
    """TRL's dataset preparation, exactly as ``SFTTrainer.__init__`` calls it."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    class TimedSFTTrainer(SFTTrainer):
        prepare_s = 0.0

        def _prepare_dataset(self, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = super()._prepare_dataset(*args, **kwargs)
            TimedSFTTrainer.prepare_s += time.perf_counter() - t
            return out

    datasets.disable_progress_bars()
    tok = tokenizer()  # its own instance: SFTTrainer sets the pad token on it
    model = tiny_model(tok)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=d)
        read_s = time.perf_counter() - t0
        args = SFTConfig(output_dir=f"{d}/out", report_to="none", use_cpu=True, bf16=False, dataset_num_proc=num_proc)
        trainer = TimedSFTTrainer(model=model, args=args, processing_class=tok, train_dataset=ds)
        prepared = trainer.train_dataset
        out = {"read_s": read_s, "prepare_s": TimedSFTTrainer.prepare_s, "rows": len(prepared)}
        out["total_s"] = read_s + out["prepare_s"]
        out["input_ids"], out["labels"] = prepared["input_ids"], prepared["labels"]
    return out


def trl_assistant_only_loss(path: Path) -> str:
    """What TRL does when asked to mask everything but the replies with this tokenizer."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    tok = tokenizer()
    rows = [json.loads(line) for line in path.open(encoding="utf-8").readlines()[:8]]
    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(output_dir=d, report_to="none", use_cpu=True, bf16=False, assistant_only_loss=True)
        try:
            ds = datasets.Dataset.from_list(rows)
            SFTTrainer(model=tiny_model(tok), args=args, processing_class=tok, train_dataset=ds)
        except Exception as e:  # noqa: BLE001 - the message is the finding
            return f"{type(e).__name__}: {e}"
    return "accepted"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def versions() -> dict[str, str]:
    import datasets
    import tokenizers
    import transformers
    import trl

    return {m.__name__: m.__version__ for m in (trl, transformers, tokenizers, datasets)}


def measure(path: Path, repeat: int, trl_num_proc: int | None, cache: bool) -> dict[str, Any]:
    tok = tokenizer()
    runs: list[dict[str, Any]] = []
    ours: dict[str, Any] = {}  # each side's fastest repeat
    theirs: dict[str, Any] = {}
    for i in range(repeat):
        order = ("sftkit", "trl") if i % 2 == 0 else ("trl", "sftkit")
        run: dict[str, Any] = {"load_before": load()}
        for side in order:
            log(f"repeat {i + 1}/{repeat}: {side} (load {load()})")
            if side == "sftkit":
                res = sftkit_prepare(path, tok)
                ours = res if not ours or res["total_s"] < ours["total_s"] else ours
            else:
                res = trl_prepare(path)
                theirs = res if not theirs or res["total_s"] < theirs["total_s"] else theirs
            run[f"{side}_total_s"] = round(res["total_s"], 2)
            del res
        run["load_after"] = load()
        runs.append(run)
    best_ours, best_theirs = round(ours["total_s"], 2), round(theirs["total_s"], 2)
    n = ours["rows"]
    ids = [r.input_ids for r in ours["rendered"]]
    out = {
        "rows": n,
        "sftkit_rows_per_s": round(n / best_ours),
        "trl_rows_per_s": round(n / best_theirs),
        "ratio": round(best_theirs / best_ours, 2),
        "sftkit_total_s": best_ours,
        "trl_total_s": best_theirs,
        "sftkit_check_s": round(ours["check_s"], 2),
        "sftkit_render_tokenize_mask_s": round(ours["render_s"], 2),
        "trl_read_s": round(theirs["read_s"], 2),
        "trl_prepare_s": round(theirs["prepare_s"], 2),
        "tokens": sum(map(len, ids)),
        "same_input_ids": ids == theirs["input_ids"],
        "sftkit_trained_tokens": sum(r.n_trainable for r in ours["rendered"]),
        "trl_trained_tokens": sum(sum(1 for x in lab if x != -100) for lab in theirs["labels"]),
        "template_rows": ours["template_rows"],
        "trl_dataset_num_proc": None,
        "runs": runs,
    }
    if trl_num_proc:
        log(f"trl with dataset_num_proc={trl_num_proc} (load {load()})")
        extra = trl_prepare(path, trl_num_proc)
        out[f"trl_num_proc{trl_num_proc}_rows_per_s"] = round(n / extra["total_s"])
    if cache:
        log(f"sftkit prepare(), cold then warm cache (load {load()})")
        out.update({f"sftkit_{k}": v for k, v in cache_cold_warm(path, tok).items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--trl-num-proc", type=int, default=0, help="also time TRL with this dataset_num_proc")
    ap.add_argument("--no-cache", action="store_true", help="skip the cold/warm prepared-data cache timing")
    a = ap.parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        generate(path, a.rows)
        out = measure(path, a.repeat, a.trl_num_proc or None, not a.no_cache)
        out["trl_assistant_only_loss"] = trl_assistant_only_loss(path)
    out.update({"started": started, "cpus": os.cpu_count(), "versions": versions()})
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
