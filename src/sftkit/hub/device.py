"""The machine: which devices and accelerator packages it has.

``Capabilities`` is what every device decision reads (training's accelerator checks, the
inference device rule, ``--engine vllm``). ``detect()`` fills it in from this machine; tests pass
their own to exercise GPU-side decisions on a CPU-only machine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from sftkit.core.errors import AcceleratorUnavailable

_PACKAGES = ("unsloth", "liger_kernel", "flash_attn", "bitsandbytes", "vllm")


@dataclass(frozen=True)
class Capabilities:
    cuda: bool
    capability: tuple[int, int] | None = None  # CUDA compute capability of device 0
    bf16: bool = False  # the CUDA GPU computes in bf16 natively
    cpu_bf16: bool = False  # the CPU has native bf16 instructions (AVX512-BF16 / AMX)
    packages: frozenset[str] = field(default_factory=frozenset)
    torch_varlen: bool = False  # this torch ships torch.nn.attention.varlen (variable-length flash attention)
    name: str = ""  # the GPU's name (device 0), "" on a CPU

    def has(self, package: str) -> bool:
        return package in self.packages

    def device(self) -> str:
        if not self.cuda:
            return "this machine has no CUDA GPU"
        cc = f"{self.capability[0]}.{self.capability[1]}" if self.capability else "unknown"
        return f"this GPU has compute capability {cc}"


def detect() -> Capabilities:
    """What this machine offers (no package is imported; torch is)."""
    import torch

    cuda = torch.cuda.is_available()
    cap = tuple(torch.cuda.get_device_capability(0)) if cuda else None
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    found = frozenset(p for p in _PACKAGES if importlib.util.find_spec(p) is not None)
    name = torch.cuda.get_device_name(0) if cuda else ""
    return Capabilities(cuda, cap, bf16, cpu_bf16, found, has_torch_varlen(), name)  # type: ignore[arg-type]


def has_torch_varlen() -> bool:
    """torch >= 2.9 ships ``torch.nn.attention.varlen.varlen_attn`` (CUDA kernels only)."""
    try:
        return importlib.util.find_spec("torch.nn.attention.varlen") is not None
    except ModuleNotFoundError:
        return False


def assumed_gpu(bf16: bool = True, capability: tuple[int, int] = (8, 0), name: str = "") -> Capabilities:
    """A CUDA GPU that is not here (``sft estimate --device cuda`` on a CPU machine): this install's
    packages and torch, the stated generation (Ampere-class unless told otherwise)."""
    found = frozenset(p for p in _PACKAGES if importlib.util.find_spec(p) is not None)
    return Capabilities(True, capability, bf16, False, found, has_torch_varlen(), name)


def check_vllm(caps: Capabilities | None = None) -> None:
    """``--engine vllm``: the vllm package and a CUDA GPU (its PyPI wheels are CUDA builds)."""
    caps = caps or detect()
    if not caps.has("vllm"):
        raise AcceleratorUnavailable("--engine vllm: vllm is not installed (`pip install vllm`; it needs a CUDA "
                                     "GPU); use --engine transformers")
    if not caps.cuda:
        raise AcceleratorUnavailable(f"--engine vllm needs a CUDA GPU ({caps.device()}); "
                                     "use --engine transformers")
