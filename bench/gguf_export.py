"""GGUF export of the bundled SmolLM2-135M (``sft export --gguf``): file size, write time, peak memory of the
write, and the verification numbers, per type. One JSON line per type, then a summary JSON line last.

usage: python bench/gguf_export.py OUT_DIR [f16 bf16 q8_0 f32]

The peak RSS (VmHWM) is measured in a child process that only writes, so the verification does not count.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WRITE = """
import sys
from pathlib import Path
from sftkit.export.gguf import write_gguf
from sftkit.hub.models import resolve
src = resolve("smollm2-135m-instruct").path
def hwm():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, kept across exec)
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024
base = hwm()
info = write_gguf(src, Path(sys.argv[1]), sys.argv[2], log=lambda m: None)
print(info.seconds, base, hwm())
"""


def one(src: Path, out: Path, qtype: str) -> dict:
    from sftkit.export.gguf import verify_gguf

    f = out / f"smollm2-{qtype}.gguf"
    w = subprocess.run([sys.executable, "-c", WRITE, str(f), qtype], capture_output=True, text=True, check=True)
    write_s, rss_before, rss_peak = map(float, w.stdout.split()[-3:])
    t = time.monotonic()
    rec = verify_gguf(src, f, qtype, log=lambda m: None)
    qa = rec["quality"]
    return {"qtype": qtype, "mb": round(f.stat().st_size / 1e6, 1), "write_s": write_s,
            "write_peak_rss_mb": round(rss_peak), "rss_before_write_mb": round(rss_before),
            "verify_s": round(time.monotonic() - t, 1), "exact_max_abs_diff": rec["exactness"].get("max_abs_diff"),
            "max_abs_diff": round(qa["max_abs_diff"], 4), "rel": round(qa["rel_max_abs_diff"], 5),
            "top1": qa["top1_agreement"], "top1_confident": qa["top1_agreement_confident"],
            "confident_positions": qa["confident_positions"], "mean_kl": qa["mean_kl"], "ok": rec["ok"]}


def main() -> None:
    from sftkit.hub.models import resolve

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    src = resolve("smollm2-135m-instruct").path
    rows = []
    for qtype in sys.argv[2:] or ["f16", "bf16", "q8_0"]:
        rows.append(one(src, out, qtype))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"bench": "gguf_export", "types": [r["qtype"] for r in rows], "all_ok": all(r["ok"] for r in rows),
                      "mb": {r["qtype"]: r["mb"] for r in rows},
                      "bench_process_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
