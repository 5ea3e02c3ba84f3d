"""Training faults: the run folder's disk, Ctrl-C, NaN/inf loss, and I/O failures mid-run.

* ``check_free_space`` fails fast, before any weights load, on a disk without room for
  the checkpoints this run will write (estimated from the model's weight files). Whether
  the output folder may be used at all, and can be written, is ``sftkit.core.rundir``'s call.
* ``GracefulStop``: the first Ctrl-C (SIGINT) saves a checkpoint at the end of the
  current optimizer step and stops; the run then raises ``Interrupted`` (exit 130)
  saying how to resume. A second Ctrl-C stops at once (the last *complete*
  checkpoint is still there: checkpoints are only marked complete once written).
* ``NonFiniteLossGuard``: a NaN/inf training loss stops the run at that step, naming
  the source rows (file:line) of the micro-batches that produced it; the bad step is
  never saved.
* ``io_failures``: a disk filling up during a save, or a checkpoint file that
  ``torch.load(weights_only=True)`` refuses, become one clear ``TrainError``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import pickle
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sftkit.core.errors import TrainError
from sftkit.train.callbacks import last_complete_checkpoint

MB = 1024 * 1024
# Checkpoints of full fine-tuning hold the weights plus AdamW's two fp32 moments: at least
# 3x the fp32 weights. LoRA checkpoints hold only the adapter and its optimizer state.
_FULL_FACTOR = 3.0
_ADAPTER_FACTOR = 0.1
_MIN_FREE = 64 * MB


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; ``str()`` says what was saved and how to resume."""


class NonFiniteLoss(TrainError):
    """The training loss became NaN or inf."""


RESUME_HINT = "continue with the same command plus --resume (`sft train CONFIG --resume`)"


# -- before training -------------------------------------------------------------------


def weights_bytes(model_path: Path) -> int:
    """Size of the model's weight files on disk (0 if none are found)."""
    files = [*model_path.glob("*.safetensors"), *model_path.glob("*.bin")]
    return sum(f.stat().st_size for f in files if f.is_file())


def checkpoint_need(model_path: Path, full: bool, keep: int | None) -> int:
    """Bytes the run folder needs: ``keep`` checkpoints plus the one being written before the
    oldest is rotated out, plus the final model or adapter. An estimate, not a promise."""
    w = weights_bytes(model_path)
    per_ckpt = w * (_FULL_FACTOR if full else _ADAPTER_FACTOR)
    final = w if full else w * _ADAPTER_FACTOR
    return int(per_ckpt * (max(2, keep or 2) + 1) + final)


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def check_free_space(run_dir: Path, need: int, reused: bool = True) -> None:
    """Fail unless the disk has room for the run. The folder need not exist yet (it is made
    only once the run's inputs have passed their checks): its nearest existing parent's disk
    counts. Checkpoints already in the folder count as room taken when they are ``reused``
    (a resume rotates them out or removes them) rather than moved aside and kept."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    need = max(need - (_tree_bytes(run_dir / "checkpoints") if reused else 0), _MIN_FREE)
    if free < need:
        raise TrainError(f"output_dir {run_dir}: {free / MB:.1f} MB free, but this run's checkpoints need about "
                         f"{need / MB:.0f} MB; free some space or choose another output_dir "
                         "(nothing was loaded or trained)")


# -- Ctrl-C ---------------------------------------------------------------------------


class GracefulStop(TrainerCallback):
    """First SIGINT: save at the end of this step and stop. Second: stop at once.

    Installed only in the main thread of a single-process run: under torchrun the
    launcher owns the signal and stops every worker (resume from the last checkpoint).
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: Any = None

    def install(self) -> GracefulStop:
        single = int(os.environ.get("WORLD_SIZE", "1")) == 1
        if single and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._first)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _first(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._second)
        # os.write: safe inside a signal handler, unlike the rich console it may interrupt
        os.write(2, b"\nCtrl-C: saving a checkpoint at the end of this step, then stopping "
                    b"(press Ctrl-C again to stop at once)\n")

    def _second(self, signum: int, frame: Any) -> None:
        self.uninstall()
        raise Interrupted("stopped at once by a second Ctrl-C; the current step was not saved. "
                          f"The last complete checkpoint is kept: {RESUME_HINT}")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.requested and self.stopped_at is None:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def raise_if_stopped(self, run_dir: Path, max_steps: int) -> None:
        """After ``trainer.train`` returned: a run stopped early by Ctrl-C is not finished."""
        if self.stopped_at is None or self.stopped_at >= max_steps:
            return
        ckpt = run_dir / "checkpoints" / f"checkpoint-{self.stopped_at}"
        raise Interrupted(f"interrupted by Ctrl-C at step {self.stopped_at} of {max_steps}; checkpoint saved in "
                          f"{ckpt}; {RESUME_HINT}")


# -- NaN / inf ----------------------------------------------------------------------


def _row_ids(ids: Any, mask: Any, pos: Any) -> list[list[int]]:
    """The examples inside one collated micro-batch: unpadded rows, or the segments of
    packed rows (position ids restart at 0 for each example)."""
    out: list[list[int]] = []
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        if pos is not None:
            p = pos[b].tolist()
            starts = [i for i, x in enumerate(p) if x == 0] + [len(p)]
            out += [row[s:e] for s, e in itertools.pairwise(starts)]
        else:
            out.append(row[: int(mask[b].sum())] if mask is not None else row)
    return out


class NonFiniteLossGuard(TrainerCallback):
    """Checks every training micro-batch's loss and stops the run at the first NaN/inf.

    A forward hook keeps each micro-batch's loss (a tensor: no device sync) and its
    input tensors (references, no copy); at the end of every optimizer step one check
    decides. Only when it fails are the token rows matched back to their examples'
    ``source`` (file:line), so the normal path costs nothing per example.
    """

    def __init__(self, examples: Sequence[Any], checkpoints: Path) -> None:
        self.examples, self.checkpoints = examples, checkpoints
        self._losses: list[Any] = []
        self._inputs: list[tuple[Any, Any, Any]] = []
        self._hook: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._record, with_kwargs=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _record(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        loss = getattr(output, "loss", None)
        if not module.training or loss is None:
            return
        self._losses.append(loss.detach())
        self._inputs.append((kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("position_ids")))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        import torch

        losses, inputs = self._losses, self._inputs
        self._losses, self._inputs = [], []
        if not losses:
            return
        values = torch.stack([x.float().reshape(()) for x in losses])
        finite = torch.isfinite(values)
        if bool(finite.all()):  # the one device sync per optimizer step
            return
        bad = (~finite).nonzero().flatten().tolist()
        kind = "nan" if bool(values[bad].isnan().any()) else "inf"
        sources = self._sources([inputs[i] for i in bad])
        raise NonFiniteLoss(self._message(state.global_step, kind, sources))

    def _sources(self, batches: list[tuple[Any, Any, Any]]) -> list[str]:
        by_ids: dict[tuple[int, ...], list[str]] = {}
        for e in self.examples:
            by_ids.setdefault(tuple(e.input_ids), []).append(e.source or "(unknown source)")
        found: list[str] = []
        for ids, mask, pos in batches:
            if ids is None:
                continue
            for row in _row_ids(ids.cpu(), None if mask is None else mask.cpu(), None if pos is None else pos.cpu()):
                found += [s for s in by_ids.get(tuple(row), []) if s not in found]
        return found

    def _message(self, step: int, kind: str, sources: list[str]) -> str:

        shown = ", ".join(sources[:20]) + (f" (+{len(sources) - 20} more)" if len(sources) > 20 else "")
        last = last_complete_checkpoint(self.checkpoints)
        keep = f"the last complete checkpoint is {last}" if last else "no checkpoint was saved yet"
        return (f"training loss became {kind} at step {step}, on the batch built from {shown or 'unknown rows'}; "
                f"this step was not saved and {keep}. Check those rows, lower train.learning_rate or keep "
                f"train.max_grad_norm > 0, then {RESUME_HINT} or start a new output_dir")


# -- I/O during training --------------------------------------------------------------


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _disk_full(e: BaseException, run_dir: Path) -> bool:
    usage = shutil.disk_usage(run_dir)
    if usage.free < max(16 * MB, usage.total // 200):  # torch.save reports ENOSPC without an errno
        return True
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return True
        if "No space left" in str(x) or "StorageFull" in str(x):  # torch.save / safetensors wrap the OSError
            return True
    return False


@contextlib.contextmanager
def io_failures(run_dir: Path) -> Iterator[None]:
    """Turn a disk filling up mid-run, or a refused unpickling on resume, into ``TrainError``."""

    try:
        yield
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        if isinstance(e, TrainError):
            raise
        if isinstance(e, pickle.UnpicklingError):
            raise TrainError(f"refusing to load a checkpoint file that is not plain tensor data (torch.load with "
                             f"weights_only=True rejected it: {str(e).splitlines()[0]}); the checkpoint was not "
                             "written by sftkit or was modified. Delete it or start a new output_dir") from e
        if not _disk_full(e, run_dir):
            raise
        last = last_complete_checkpoint(run_dir / "checkpoints")
        free = shutil.disk_usage(run_dir).free / MB
        raise TrainError(f"the disk holding {run_dir} is full ({free:.1f} MB free) and a write failed "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r}); "
                         f"{'the last complete checkpoint is ' + str(last) if last else 'no checkpoint is complete'}"
                         f"; free some space, then {RESUME_HINT}") from e
