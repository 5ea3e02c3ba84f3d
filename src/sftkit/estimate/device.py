"""Devices: a table of known GPUs, and this machine's CPU measured once.

The CPU profile (process baseline RSS and fp32 matmul rate) is measured in a
fresh subprocess the first time it is needed and cached in
``$SFTKIT_HOME/estimate/cpu_profile.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sftkit.core.errors import UsageError
from sftkit.hub.models import sftkit_home

GB = 1e9
MFU = 0.4  # typical model-FLOPs utilisation of a well-fed GPU in fine-tuning


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    memory_gb: float
    tflops: float  # dense bf16 (fp16 where there is no bf16) tensor-core peak, or the measured CPU rate
    bf16: bool = True
    flash_attention: bool = True
    kind: str = "cuda"
    efficiency: float = MFU
    overhead_gb: float = 0.75  # CUDA context + cuBLAS/cuDNN workspaces
    capability: tuple[int, int] = (8, 0)  # CUDA compute capability (what the training plan reads)


GPUS: dict[str, Device] = {
    d.name.lower(): d
    for d in (
        Device("A100-40GB", 40, 312),
        Device("A100-80GB", 80, 312),
        Device("H100-80GB", 80, 989, capability=(9, 0)),
        Device("H200", 141, 989, capability=(9, 0)),
        Device("RTX4090", 24, 165, capability=(8, 9)),
        Device("RTX3090", 24, 71, capability=(8, 6)),
        Device("V100-32GB", 32, 125, bf16=False, flash_attention=False, capability=(7, 0)),
        Device("T4", 16, 65, bf16=False, flash_attention=False, capability=(7, 5)),
        Device("L4", 24, 121, capability=(8, 9)),
        Device("A10", 24, 125, capability=(8, 6)),
    )
}
ALIASES = {"a100": "a100-80gb", "a100-40": "a100-40gb", "a100-80": "a100-80gb", "h100": "h100-80gb",
           "4090": "rtx4090", "3090": "rtx3090", "v100": "v100-32gb"}


def gpu(name: str) -> Device:
    key = name.lower().replace(" ", "").replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in GPUS:
        raise UsageError(f"unknown GPU {name!r}; known: {', '.join(d.name for d in GPUS.values())} "
                         f"(or give --gpu-memory GB)")
    return GPUS[key]


@dataclass(frozen=True, slots=True)
class CpuProfile:
    baseline_gb: float  # RSS of a process that imported torch, transformers, peft and sftkit.train.recipe
    gflops: float  # fp32 matmul rate on all threads
    key: str


_PROBE = r"""
import json, resource, time
import torch, transformers, peft, sftkit.train.recipe  # what `sft train` imports before any model
a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)
a @ b
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 0.5:
    a @ b; n += 1
rate = 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e9
# this process's own peak: Linux keeps ru_maxrss across exec, so a probe started from a process that had
# grown (a training run's preflight) would report its parent's peak; VmHWM belongs to this image only
try:
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_gb": hwm * 1024 / 1e9, "gflops": rate}))
"""


def _cpu_key() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    # "vmhwm": profiles cached before the probe read its own peak (ru_maxrss) are measured again
    return f"{cpu}|{os.cpu_count()}|{torch.get_num_threads()}|{torch.__version__}|vmhwm"


def cpu_profile(refresh: bool = False) -> CpuProfile:
    """Measured once per machine/torch version (about 5 s) and cached."""
    path = sftkit_home() / "estimate" / "cpu_profile.json"
    key = _cpu_key()
    if path.is_file() and not refresh:
        try:
            d = json.loads(path.read_text())
            if d.get("key") == key:
                return CpuProfile(**d)
        except (ValueError, TypeError):
            pass
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    prof = CpuProfile(baseline_gb=round(d["rss_gb"], 3), gflops=round(d["gflops"], 1), key=key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(prof)))
    return prof


def cpu_device(profile: CpuProfile | None = None) -> Device:
    prof = profile or cpu_profile()
    # Training on CPU reaches about half the raw matmul rate (norms, softmax, optimizer are memory-bound).
    return Device("cpu", available_ram_gb(), prof.gflops / 1e3, bf16=True, flash_attention=True, kind="cpu",
                  efficiency=0.5, overhead_gb=prof.baseline_gb)


def available_ram_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().available / GB
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return 0.0


def detect_device() -> Device:
    """The first CUDA GPU (free memory) if there is one, else this CPU."""
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(0)
        known = next((d for k, d in GPUS.items() if k.split("-")[0] in name.lower().replace(" ", "")), None)
        return Device(name, free / GB, known.tflops if known else 100.0, bf16=props.major >= 8,
                      flash_attention=props.major >= 8, capability=(props.major, props.minor))
    return cpu_device()
