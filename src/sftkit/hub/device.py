"""The machine: which devices and accelerator packages it has, and the one inference device rule.

``Capabilities`` is what every device decision reads (training's accelerator checks, the
inference device rule, ``--engine vllm``). ``detect()`` fills it in from this machine; tests pass
their own to exercise GPU-side decisions on a CPU-only machine.

``resolve_device(spec, caps)`` is the rule every command that loads a model for inference goes
through (``--device auto|cpu|cuda|cuda:N|mps``, ``eval.device``):

* ``auto``: CUDA if present, else MPS, else the CPU; it never fails for lack of a GPU.
* dtype: bf16 where the card computes it natively (Ampere and newer), else fp16 on a GPU; fp32 on
  the CPU. An explicit dtype wins (bf16 on a card without it is refused).
* ``cuda`` / ``auto`` pick the card with the most free memory. When the weights (parameters x
  dtype bytes) exceed ``FIT_SHARE`` of that card's free memory and several cards are visible, the
  model is spread over them (``device_map="auto"``). ``cuda:N`` pins card N.
* ``cuda`` (or ``mps``) on a machine without it raises ``DeviceUnavailable``: one sentence naming
  what was found.
"""

from __future__ import annotations

import gc
import importlib.util
import re
from dataclasses import dataclass, field, replace
from typing import Any

from sftkit.core.errors import AcceleratorUnavailable, DeviceUnavailable, UsageError
from sftkit.core.vocab import DEVICE_SPEC

_PACKAGES = ("unsloth", "liger_kernel", "flash_attn", "bitsandbytes", "vllm")
DEVICE_SPECS = "auto, cpu, cuda, cuda:N or mps"
# The weights may take this share of a card's free memory; the rest is for the KV cache and
# activations. A model heavier than that is spread over the cards when there are several.
FIT_SHARE = 0.8
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_NAMES = {"auto": None, "fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                "fp16": "float16", "float16": "float16", "half": "float16"}
_SPEC = re.compile(DEVICE_SPEC)
GB = 1024**3


@dataclass(frozen=True)
class Card:
    """One visible CUDA device. Memory is 0 when it was not read (``detect(memory=False)``)."""

    index: int
    name: str = "GPU"
    total_bytes: int = 0
    free_bytes: int = 0
    capability: tuple[int, int] | None = None
    bf16: bool = False


@dataclass(frozen=True)
class Capabilities:
    cuda: bool
    capability: tuple[int, int] | None = None  # CUDA compute capability of device 0
    bf16: bool = False  # the CUDA GPU computes in bf16 natively
    cpu_bf16: bool = False  # the CPU has native bf16 instructions (AVX512-BF16 / AMX)
    packages: frozenset[str] = field(default_factory=frozenset)
    cards: tuple[Card, ...] = ()  # the visible CUDA devices (cuda:0, cuda:1, ...)
    mps: bool = False  # Apple's Metal backend
    torch_version: str = ""
    cuda_build: str | None = None  # torch.version.cuda: None for a CPU-only PyTorch build
    torch_varlen: bool = False  # this torch ships torch.nn.attention.varlen (variable-length flash attention)
    name: str = ""  # the GPU's name (device 0), "" on a CPU

    def has(self, package: str) -> bool:
        return package in self.packages

    @property
    def cuda_count(self) -> int:
        return len(self.visible_cards())

    def visible_cards(self) -> tuple[Card, ...]:
        """The CUDA cards; a hand-made ``Capabilities(cuda=True, ...)`` without ``cards`` counts as one card."""
        if self.cards or not self.cuda:
            return self.cards
        return (Card(0, capability=self.capability, bf16=self.bf16),)

    def device(self) -> str:
        if not self.cuda:
            return "this machine has no CUDA GPU"
        cc = f"{self.capability[0]}.{self.capability[1]}" if self.capability else "unknown"
        return f"this GPU has compute capability {cc}"

    def found(self) -> str:
        """What this machine has, for a refusal: why there is no CUDA GPU, and whether MPS is there."""
        if self.cuda:
            return f"{self.cuda_count} CUDA GPU(s)"
        torch = f"PyTorch {self.torch_version}" if self.torch_version else "PyTorch"
        if self.torch_version and self.cuda_build is None:
            why = f"{torch} is a CPU-only build"
        elif self.cuda_build:
            why = f"{torch} is built for CUDA {self.cuda_build} but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)"
        else:
            why = "no CUDA GPU is visible"
        return f"{why}, {'but Apple MPS is available' if self.mps else 'and there is no Apple MPS either'}"


def detect(memory: bool = False) -> Capabilities:
    """What this machine offers (no package is imported; torch is). ``memory``: also read each card's
    free/total memory (it creates a CUDA context on every visible card, so training leaves it off)."""
    import torch

    cuda = torch.cuda.is_available()
    cards = tuple(_card(torch, i, memory) for i in range(torch.cuda.device_count())) if cuda else ()
    cap = cards[0].capability if cards else None
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    found = frozenset(p for p in _PACKAGES if importlib.util.find_spec(p) is not None)
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Capabilities(cuda, cap, bf16, cpu_bf16, found, cards=cards, mps=mps, torch_version=str(torch.__version__),
                        cuda_build=torch.version.cuda, torch_varlen=has_torch_varlen(),
                        name=cards[0].name if cards else "")


def _card(torch: Any, i: int, memory: bool) -> Card:
    props = torch.cuda.get_device_properties(i)
    cc = (int(props.major), int(props.minor))
    free, total = torch.cuda.mem_get_info(i) if memory else (0, int(props.total_memory))
    rocm = getattr(torch.version, "hip", None) is not None
    return Card(i, str(props.name), int(total), int(free), cc, bf16=rocm or cc >= (8, 0))


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
    return Capabilities(True, capability, bf16, False, found, torch_varlen=has_torch_varlen(), name=name)


def check_vllm(caps: Capabilities | None = None) -> None:
    """``--engine vllm``: the vllm package and a CUDA GPU (its PyPI wheels are CUDA builds)."""
    caps = caps or detect()
    if not caps.has("vllm"):
        raise AcceleratorUnavailable("--engine vllm: vllm is not installed (`pip install vllm`; it needs a CUDA "
                                     "GPU); use --engine transformers")
    if not caps.cuda:
        raise AcceleratorUnavailable(f"--engine vllm needs a CUDA GPU ({caps.device()}); "
                                     "use --engine transformers")


# -- the inference device rule -----------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceDevice:
    """Where a model for inference goes. ``device`` is where inputs go (with ``device_map`` the first
    card); ``note`` says why, in a few words (logs, ``/health``)."""

    device: str  # "cpu", "cuda:1", "mps"
    dtype: str  # "float32", "bfloat16", "float16"
    device_map: str | None = None  # "auto": the weights are spread over the visible cards
    note: str = ""
    fits: bool = True  # False: the weights look larger than the one card's free memory

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]

    def describe(self) -> str:
        where = f"{self.device} + device_map=auto" if self.device_map else self.device
        return f"{where}, {self.dtype}" + (f" ({self.note})" if self.note else "")


def parse_dtype(dtype: str | None) -> str | None:
    """``bf16``/``fp16``/``fp32``/full names -> the torch name; None/"auto" -> None (the rule decides)."""
    if dtype is None:
        return None
    key = dtype.strip().lower()
    if key not in _DTYPE_NAMES:
        raise UsageError(f"dtype {dtype!r}: use auto, bfloat16, float16 or float32")
    return _DTYPE_NAMES[key]


def resolve_device(spec: str = "auto", caps: Capabilities | None = None, model_params: int | None = None,
                   dtype: str | None = None, what: str = "--device") -> InferenceDevice:
    """The rule (see the module docstring). ``model_params``: the model's parameter count, for the
    one-card-or-several decision (None: one card). ``what`` names the setting in messages."""
    m = _SPEC.fullmatch(str(spec).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UsageError(f"{what} {spec}: use {DEVICE_SPECS}")
    kind, index = m.group(1), m.group(2)
    want = parse_dtype(dtype)
    if kind == "cpu":
        return InferenceDevice("cpu", want or "float32", note="asked for" if want else "")
    caps = caps or detect(memory=True)
    if kind == "auto":
        if caps.cuda_count:
            return _on_cuda(caps, None, model_params, want, what)
        if caps.mps:
            return InferenceDevice("mps", want or "float16", note="auto: Apple MPS")
        return InferenceDevice("cpu", want or "float32", note="auto: no GPU found")
    if kind == "mps":
        if not caps.mps:
            raise DeviceUnavailable(f"{what} mps: this machine has no Apple MPS device ({caps.found()}); "
                                    f"use {what} auto or {what} cpu")
        return InferenceDevice("mps", want or "float16")
    if not caps.cuda_count:
        raise DeviceUnavailable(f"{what} {spec}: no CUDA GPU found ({caps.found()}); use {what} auto or {what} cpu")
    return _on_cuda(caps, None if index is None else int(index), model_params, want, what)


def _on_cuda(caps: Capabilities, index: int | None, params: int | None, want: str | None,
             what: str) -> InferenceDevice:
    cards = caps.visible_cards()
    if index is not None and index >= len(cards):
        raise DeviceUnavailable(f"{what} cuda:{index}: this machine has {len(cards)} CUDA GPU(s) "
                                f"(cuda:0 to cuda:{len(cards) - 1}); pick one of those or use {what} cuda")
    # The card with the most free memory (ties: the lowest index); a pinned one when asked.
    card = cards[index] if index is not None else max(cards, key=lambda c: (c.free_bytes, -c.index))
    dtype = want or ("bfloat16" if card.bf16 else "float16")
    if want == "bfloat16" and not card.bf16:
        raise DeviceUnavailable(f"dtype bfloat16: cuda:{card.index} ({card.name}, compute capability "
                                f"{_cc(card)}) has no native bf16; use float16")
    dev = InferenceDevice(f"cuda:{card.index}", dtype, note=card.name)
    weights = (params or 0) * DTYPE_BYTES[dtype]
    if not params or not card.free_bytes or weights <= FIT_SHARE * card.free_bytes:
        return dev
    if index is not None or len(cards) < 2:  # pinned, or nowhere to spread to
        return replace(dev, fits=False, note=f"{card.name}; {weights / GB:.1f} GB of weights may not fit its "
                                             f"{card.free_bytes / GB:.1f} GB free")
    if want is None and not all(c.bf16 for c in cards):
        dtype = "float16"  # spread over cards of mixed generations: the dtype every one computes
    first = min(c.index for c in cards)
    return InferenceDevice(f"cuda:{first}", dtype, "auto",
                           note=f"{weights / GB:.1f} GB of weights > {FIT_SHARE:.0%} of the {card.free_bytes / GB:.1f}"
                                f" GB free on one card: spread over {len(cards)} cards")


def _cc(card: Card) -> str:
    return f"{card.capability[0]}.{card.capability[1]}" if card.capability else "unknown"


def release_memory() -> None:
    """Give cached device memory back after a model is dropped (the baseline before training)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
