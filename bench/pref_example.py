"""Benchmark: the pref_privacy example end to end (SFT stage, then DPO), as a user runs it.

    .venv/bin/python bench/pref_example.py [--work DIR] [--example DIR]

Runs ``sft run examples/pref_privacy --json`` in DIR (a fresh temporary folder by default, so both
stages train from scratch) and prints one JSON line: held-out preference accuracy of the SFT model
(the baseline) and of the DPO model, the implicit reward, exact match of the generated answers
against the chosen replies, per-kind preference accuracy (privacy requests vs ordinary questions),
``refusals`` (greedy answers that open with an apology, on the privacy prompts and on the ordinary
questions, per side), the two training times and the wall time. ``--example``: a copy of the example
folder to try a variant. The issue's targets: preference accuracy +30 points or more, and the behaviour
visible in the answers (refusals counts it: the metric alone passed runs that never refused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pref_privacy"


def _per_kind(run_dir: Path, example: Path) -> dict[str, dict[str, float]]:
    """Preference accuracy per row kind, recomputed from the test file and the two models' scores."""
    from sftkit.data.preference import load_preference_file
    from sftkit.evaluate import prefeval
    from sftkit.evaluate.runner import load_sides

    test = example / "pref_test.jsonl"
    kinds = [json.loads(x)["kind"] for x in test.read_text(encoding="utf-8").splitlines()]
    pairs = load_preference_file(test).rows
    out: dict[str, dict[str, float]] = {}
    for side in load_sides(str(run_dir), None):
        with side.mode():
            logps = prefeval.pair_logps(side.engine, pairs)
        for kind in sorted(set(kinds)):
            picked = [x for x, k in zip(logps, kinds, strict=True) if k == kind]
            out.setdefault(kind, {})[side.name] = prefeval.side_preference(picked)["pref_accuracy"]
    return out


APOLOGY = ("Sorry", "I'm sorry", "I am sorry", "抱歉", "很抱歉", "对不起")


def _refusals(run_dir: Path, example: Path) -> dict[str, dict[str, int]]:
    """Greedy answers that open with an apology, per side: on the privacy prompts (wanted) and on the
    ordinary questions (needless), from the evaluation's predictions."""
    kinds = [json.loads(x)["kind"] for x in (example / "pref_test.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [json.loads(x) for x in (run_dir / "eval_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        kind = kinds[row["i"]]
        for side in ("baseline", "model"):
            said = (row.get(side) or "").lstrip()
            hit = said.startswith(APOLOGY)
            out.setdefault(side, {"privacy": 0, "faq": 0, f"of_{kind}": 0})
            out[side][kind] = out[side].get(kind, 0) + hit
            out[side][f"of_{kind}"] = out[side].get(f"of_{kind}", 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--example", type=Path, default=EXAMPLE, help="the example folder (a copy to try a variant)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sftkit-pref-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sftkit.cli", "run", str(args.example.resolve()), "--json"], cwd=work,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    run_dir = Path(out["run_dir"])
    os.chdir(work)  # the run names its parent as runs/pref_privacy_sft, relative to where `sft run` ran
    ev = json.loads((run_dir / "eval.json").read_text())
    parent = json.loads((work / "runs" / "pref_privacy_sft" / "train_summary.json").read_text())
    pref = out["preference"]
    refusals = _refusals(run_dir, args.example.resolve())
    print(json.dumps({
        "bench": "pref_example", "work": str(work), "pairs": pref["n"],
        "pref_accuracy": {"sft": pref["baseline"], "dpo": pref["tuned"],
                          "gain_points": round(100 * (pref["tuned"] - pref["baseline"]), 1)},
        "reward_accuracy": pref.get("reward_accuracy"), "reward_margin": pref.get("reward_margin"),
        "exact_match": {"sft": ev["baseline"].get("exact_match"), "dpo": ev["model"].get("exact_match")},
        "per_kind": _per_kind(run_dir, args.example.resolve()),
        "sample": out.get("sample"), "refusals": refusals,
        "train_seconds": {"sft": parent["train_seconds"], "dpo": out["train_seconds"]},
        "wall_seconds": round(wall, 1), "target_gain_points": 30,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
