"""Benchmark: the annual_report example end to end on this machine (issue 20, item 1).

    .venv/bin/python bench/annual_report.py [--out runs/annual_report] [key=value ...]

Runs ``sft run examples/annual_report --json --overwrite`` as a subprocess and prints one JSON line:
the wall time of the whole command (data check, baseline, training, evaluation, report), training
seconds, the key-facts scores before and after fine-tuning, ROUGE-L, the forgetting check, and the
machine's load average at the start and end (these machines are shared: say how busy it was).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("key_facts_recall", "key_facts_accuracy", "key_facts_precision", "rougeL", "loss")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/annual_report")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sftkit.cli", "run", "examples/annual_report", "--json",
                           "--overwrite", f"output_dir={a.out}", *a.overrides],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    ev = json.loads((Path(a.out) / "eval.json").read_text(encoding="utf-8"))
    diag = json.loads((Path(a.out) / "diagnostics.json").read_text(encoding="utf-8"))
    print(json.dumps({
        "bench": "annual_report", "wall_s": round(wall, 1), "train_seconds": summary["train_seconds"],
        "n": ev["n"], "baseline": {k: ev["baseline"].get(k) for k in KEYS},
        "tuned": {k: ev["model"].get(k) for k in KEYS},
        "forgetting": {k: (ev.get("forgetting") or {}).get(k) for k in ("baseline", "model")},
        "diagnostics": [f["title"] for f in diag["findings"]],
        "load_avg_start": round(load0[0], 1), "load_avg_end": round(os.getloadavg()[0], 1),
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
