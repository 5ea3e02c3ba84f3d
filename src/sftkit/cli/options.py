"""Options several commands share: ``--device`` (the inference device rule, ``sftkit.hub.device``)."""

from __future__ import annotations

from typing import Annotated

import typer

from sftkit.hub.device import Capabilities, InferenceDevice, detect, resolve_device

DEVICE_HELP = ("Where the model runs: auto (a CUDA GPU if present, else Apple MPS, else the CPU), cpu, cuda, "
               "cuda:N or mps. bf16 on GPUs that have it, else fp16; fp32 on the CPU; a model larger than one "
               "card's free memory spreads over the visible cards.")
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]


def check_device(spec: str, dtype: str | None = None) -> InferenceDevice:
    """Refuse a device this machine does not have (exit 2, one sentence) before anything loads; the
    placement itself is decided again with the model's size when it loads."""
    # auto and cpu cannot be missing: only their spelling (and the dtype's) is checked, without torch
    ask = spec.strip().lower() not in ("auto", "cpu")
    return resolve_device(spec, detect() if ask else Capabilities(cuda=False), dtype=dtype)
