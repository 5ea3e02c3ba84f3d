"""Experiment trackers for ``train.report_to``, all able to work with no network.

tensorboard, wandb and mlflow go through transformers' own integrations; swanlab
through its ``SwanLabCallback`` (its ``report_to`` path fails offline with "No active
Run"). Without credentials, wandb and swanlab log offline into the run folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from sftkit.core.errors import MethodUnavailable
from sftkit.core.vocab import TRACKERS


def setup(names: list[str], run_dir: Path, run_name: str) -> tuple[list[str], list[Any]]:
    """Return (``report_to`` for TrainingArguments, extra callbacks). Checks packages first."""
    unknown = [n for n in names if n not in TRACKERS and n != "none"]
    if unknown:
        raise MethodUnavailable(f"train.report_to: unknown tracker(s) {unknown}; choose from {', '.join(TRACKERS)}")
    names = [n for n in names if n != "none"]
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    if missing:
        raise MethodUnavailable(f"train.report_to {missing}: not installed; `pip install 'sftkit-llm[track]'` "
                                f"(or `pip install {' '.join(TRACKERS[n] for n in missing)}`)")
    report_to: list[str] = []
    callbacks: list[Any] = []
    for name in names:
        if name == "swanlab":
            callbacks.append(_swanlab(run_dir, run_name))
            continue
        if name == "wandb":
            os.environ.setdefault("WANDB_DIR", str(run_dir))
            if not os.environ.get("WANDB_API_KEY"):
                os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_PROJECT", "sftkit")
        if name == "tensorboard":
            os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
        if name == "mlflow":
            os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        report_to.append(name)
    return report_to, callbacks


def _swanlab(run_dir: Path, run_name: str) -> Any:
    from swanlab.integration.transformers import SwanLabCallback

    mode = os.environ.get("SWANLAB_MODE") or ("cloud" if os.environ.get("SWANLAB_API_KEY") else "offline")
    return SwanLabCallback(project="sftkit", experiment_name=run_name, log_dir=str(run_dir / "swanlab"),
                           mode=None if mode == "cloud" else mode)
