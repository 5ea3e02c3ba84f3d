"""The run folder: what ``sft train`` writes, and whether it may write into a given folder.

A run folder holds everything about one run (names are ``RunDir`` attributes):

=========================  ==========================================================
``sftkit_run.json``        the marker: sftkit version and config digest, written first
``config.yaml``            the resolved config
``environment.json``       library versions, platform
``fingerprint.json``       hashes of data, template, tokenizer, model, config (resume)
``data_report.json``       counts, lengths, quality; ``rejected.jsonl``: every row not used
``template_check.json``    the template contract check
``metrics.jsonl``          one line per log event; ``loss.png``: the curves
``diagnostics.json``       what the loss curves say (over-fitting, flat, memorised, diverging)
``checkpoints/``           ``checkpoint-N/`` folders, each marked complete when written
``adapter/`` | ``model/``  the final LoRA adapter, or the whole model (full / freeze)
``train_summary.json``     written last: its presence means training finished
``eval.json``              after ``sft eval``, with ``eval_predictions.jsonl``
``report.html``            ``sft report`` (and the end of training, and ``sft eval``)
``tensorboard/`` ...       tracker logs (``wandb/``, ``swanlab/``, ``mlflow.db``)
``launch.yaml``, ...       the web console's files (``console.log``, ``console_*.json``)
=========================  ==========================================================

``RunDir.plan`` decides, reading only, whether a training run may use the folder;
``RunDir.claim`` carries the decision out (moves an old run aside, creates the folder,
writes the marker). Training calls ``plan`` first, so a refusal costs nothing, and
``claim`` only once the config, data and template are known to be good, so a run that
fails its checks leaves no folder behind.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sftkit import __version__
from sftkit.core.config import Method, RunConfig
from sftkit.core.configio import load_config
from sftkit.core.errors import ConfigError, RunDirError
from sftkit.core.results import EvalResult
from sftkit.core.vocab import BUNDLED_ALIAS
from sftkit.core.yamlio import read_yaml_file

MARKER = "sftkit_run.json"
# Written into a run folder by the web console before `sft train` runs there: a folder holding only
# these is a run waiting for its first training, not someone else's files.
CONSOLE_FILES = frozenset({"launch.yaml", "console.log", "console_job.json", "console_state.json",
                           "console_stop.json"})
# Left by file managers in any folder they show; never a reason to call a folder someone's.
_NOISE = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# An sftkit run from before the marker existed: config.yaml plus one of these.
_OLD_RUN_EVIDENCE = ("fingerprint.json", "environment.json", "train_summary.json", "checkpoints")
_COMPLETE = "sftkit_complete.json"  # sftkit.train.callbacks.COMPLETE (not imported: it pulls in transformers)




class State(enum.Enum):
    EMPTY = "empty"  # missing, empty, or prepared by the console
    FOREIGN = "foreign"  # holds files sftkit did not write
    IN_PROGRESS = "in progress"  # an sftkit run that has not finished training
    FINISHED = "finished"  # an sftkit run with train_summary.json


class Overwrite(enum.Enum):
    """What happens to an earlier run in the folder when training starts over."""

    NO = "no"  # refuse
    MOVE_ASIDE = "move aside"  # rename it to <folder>.old-<UTC time> (``--overwrite``)
    DELETE = "delete"  # remove it (``sft demo``: its folder holds only its own re-runnable run)


class Action(enum.Enum):
    NEW = "new"  # train from step 0 in an empty (or emptied) folder
    RESTART = "restart"  # the same config stopped before its first checkpoint: start over in place
    RESUME = "resume"  # continue an unfinished run from its last complete checkpoint
    CONTINUE = "continue"  # train a finished run further (a larger train.max_steps, ...)
    DONE = "done"  # --resume on a run that already finished with this config: nothing to do


@dataclass(frozen=True)
class Plan:
    action: Action
    replace: Overwrite = Overwrite.NO  # for NEW over an earlier run: what happens to it
    moved_to: Path | None = None  # after ``claim``: where MOVE_ASIDE put the earlier run


def config_digest(cfg: RunConfig | dict[str, Any]) -> str:
    """A digest of everything the config says except where the run is written."""
    raw = dict(cfg) if isinstance(cfg, dict) else cfg.model_dump(mode="json")
    raw.pop("output_dir", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class RunDir:
    """One run folder: its layout, what it holds now, and whether training may use it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()

    # -- layout ---------------------------------------------------------------------------------
    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def environment(self) -> Path:
        return self.path / "environment.json"

    @property
    def fingerprint(self) -> Path:
        return self.path / "fingerprint.json"

    @property
    def data_report(self) -> Path:
        return self.path / "data_report.json"

    @property
    def rejected(self) -> Path:
        return self.path / "rejected.jsonl"

    @property
    def template_check(self) -> Path:
        return self.path / "template_check.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def diagnostics(self) -> Path:
        return self.path / "diagnostics.json"

    @property
    def summary(self) -> Path:
        return self.path / "train_summary.json"

    @property
    def eval_results(self) -> Path:
        return self.path / "eval.json"

    @property
    def eval_predictions(self) -> Path:
        return self.path / "eval_predictions.jsonl"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def model(self) -> Path:
        return self.path / "model"

    def final(self, method: Method) -> Path:
        """Where the trained weights go: ``adapter/`` for LoRA and QLoRA, ``model/`` otherwise."""
        return self.path / ("adapter" if method in (Method.lora, Method.qlora) else "model")

    # -- what the folder holds ------------------------------------------------------------------
    def entries(self) -> list[str]:
        """Names in the folder (sorted, folders with a trailing /), file-manager noise left out."""
        if not self.path.is_dir():
            return []
        try:
            return sorted(p.name + ("/" if p.is_dir() else "") for p in self.path.iterdir() if p.name not in _NOISE)
        except OSError as e:
            raise RunDirError(f"output_dir {self.path} cannot be read ({e.strerror or e}), so sftkit cannot tell "
                              "whether it holds a run; choose another output_dir") from e

    def is_run(self) -> bool:
        """Did sftkit make this folder? Its marker says so; a run from before the marker existed is
        recognised by ``config.yaml`` beside a file only training writes."""
        if self.marker.is_file():
            return True
        return self.config.is_file() and any((self.path / e).exists() for e in _OLD_RUN_EVIDENCE)

    def state(self) -> State:
        names = {e.rstrip("/") for e in self.entries()}
        if not names or (names <= CONSOLE_FILES and not self.is_run()):
            return State.EMPTY
        if not self.is_run():
            return State.FOREIGN
        return State.FINISHED if self.summary.is_file() else State.IN_PROGRESS

    def is_trained(self) -> bool:
        """A run whose training wrote its weights: ``config.yaml`` and ``adapter/`` or ``model/``.
        Commands that take a model take such a folder too."""
        return self.config.is_file() and (self.adapter.is_dir() or self.model.is_dir())

    def weights(self) -> tuple[Path, str] | None:
        """(folder, kind) of the trained weights: ``adapter/`` ("lora") or ``model/`` ("full")."""
        if (self.adapter / "adapter_config.json").is_file():
            return self.adapter, "lora"
        if (self.model / "config.json").is_file():
            return self.model, "full"
        return None

    # -- what the run says about itself ---------------------------------------------------------
    def raw_config(self) -> dict[str, Any]:
        """The config the run was trained with, as written (``{}`` when there is none). Lenient on
        purpose: a report or a chat must read a run made by an older sftkit whose schema differs."""
        if not self.config.is_file():
            return {}
        data = read_yaml_file(self.config, "run config")
        return data if isinstance(data, dict) else {}

    def run_config(self) -> RunConfig:
        """The run's config, validated against today's schema (``ConfigError`` names what changed)."""
        return load_config(self.config)

    def base_model(self) -> str:
        """The model reference the run started from (``model.name_or_path``)."""
        model = self.raw_config().get("model")
        ref = model.get("name_or_path") if isinstance(model, dict) else None
        return str(ref) if ref else BUNDLED_ALIAS

    def template(self) -> str | None:
        """The chat template the run was trained with (None: the tokenizer's own)."""
        tpl = self.raw_config().get("template")
        if isinstance(tpl, dict):  # a config section, e.g. {name: chatml, ...}
            tpl = tpl.get("name") or tpl.get("ref")
        return str(tpl) if tpl else None

    def eval_settings(self) -> dict[str, Any]:
        """The run's ``eval:`` section (what ``sft eval RUN`` defaults to)."""
        ev = self.raw_config().get("eval")
        return ev if isinstance(ev, dict) else {}

    def eval_result(self) -> EvalResult | None:
        """The last evaluation (``eval.json``), or None when the run was never evaluated."""
        try:
            data = json.loads(self.eval_results.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return EvalResult.model_validate(data) if isinstance(data, dict) else None

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())

    def has_complete_checkpoint(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob(f"checkpoint-*/{_COMPLETE}"))

    def complete_steps(self) -> list[int]:
        """The steps of the checkpoints marked complete, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(p.parent.name.rpartition("-")[2]) for p in self.checkpoints.glob(f"checkpoint-*/{_COMPLETE}")
                      if p.parent.name.rpartition("-")[2].isdigit())

    def recorded_digest(self) -> str | None:
        """The config digest the run was trained with: from the marker, else from its config.yaml."""
        try:
            mark = json.loads(self.marker.read_text(encoding="utf-8"))
            if isinstance(mark, dict) and isinstance(mark.get("config_digest"), str):
                return mark["config_digest"]
        except (OSError, ValueError):
            pass
        try:
            raw = read_yaml_file(self.config, "run config")
        except ConfigError:
            return None
        return config_digest(raw) if isinstance(raw, dict) else None

    def read_summary(self) -> dict[str, Any]:
        try:
            data = json.loads(self.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # -- the decision ---------------------------------------------------------------------------
    def plan(self, cfg: RunConfig, resume: str | None = None, overwrite: Overwrite = Overwrite.NO) -> Plan:
        """Whether training ``cfg`` may use this folder, and how; reads only. ``RunDirError`` when not."""
        if resume and overwrite is not Overwrite.NO:
            raise RunDirError("--resume continues the run in output_dir and --overwrite replaces it; give one of them")
        plan = self._decide(cfg, resume, overwrite)
        if plan.action is not Action.DONE:  # a finished run on read-only media may still be asked
            self.check_writable()
        return plan

    def _decide(self, cfg: RunConfig, resume: str | None, overwrite: Overwrite) -> Plan:
        state = self.state()
        if state is State.EMPTY:
            return Plan(Action.NEW)
        if state is State.FOREIGN:
            raise RunDirError(self._foreign_message())
        if overwrite is not Overwrite.NO:
            return Plan(Action.NEW, overwrite)
        same = self.recorded_digest() == config_digest(cfg)
        if state is State.FINISHED:
            return self._plan_finished(resume, same)
        if resume:
            return Plan(Action.RESUME)
        if self.has_checkpoints():
            raise RunDirError(f"output_dir {self.path} already holds checkpoints from an earlier run that did not "
                              "finish; nothing was written. Continue it with `sft train CONFIG --resume`, start "
                              "it over with --overwrite (the old run is moved aside), or set output_dir to a new "
                              "folder")
        if same:
            return Plan(Action.RESTART)
        raise RunDirError(f"output_dir {self.path} holds an unfinished run of a different config; nothing was "
                          "written. Start over with --overwrite (the old run is moved aside), or set output_dir "
                          "to a new folder")

    def _plan_finished(self, resume: str | None, same: bool) -> Plan:
        if not resume:
            step = self.read_summary().get("global_step", "?")
            raise RunDirError(f"output_dir {self.path} holds a finished run (trained to step {step}); nothing was "
                              "written. Add --resume to continue it (or to confirm it is done), --overwrite to "
                              f"train again from scratch (the old run is moved to {self.path.name}.old-<UTC time>), "
                              "or set output_dir to a new folder")
        if same and resume == "auto":
            return Plan(Action.DONE)
        if resume == "auto" and not self.has_complete_checkpoint():
            raise RunDirError(f"output_dir {self.path} holds a finished run of a different config and no complete "
                              "checkpoint to continue from (pruned, or never written); nothing was written. Train "
                              "again with --overwrite (the old run is moved aside), or set output_dir to a new folder")
        return Plan(Action.CONTINUE)

    def _foreign_message(self) -> str:
        found = self.entries()
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        return (f"output_dir {self.path} is not empty and is not an sftkit run folder (it holds {shown}); "
                "nothing was written. Set output_dir to a new or empty folder; sftkit never writes into, moves or "
                "deletes a folder it did not make")

    # -- carrying it out ------------------------------------------------------------------------
    def claim(self, cfg: RunConfig, resume: str | None = None, overwrite: Overwrite = Overwrite.NO) -> Plan:
        """Decide again (the folder may have changed since ``plan``) and make the folder ready:
        move or delete an earlier run when told to, clear a finished run's results when it is
        continued, create the folder, and write the marker. Returns what was decided."""
        plan = self.plan(cfg, resume, overwrite)
        if plan.action is Action.DONE:
            return plan
        if plan.replace is Overwrite.MOVE_ASIDE:
            plan = replace(plan, moved_to=self.move_aside())
        elif plan.replace is Overwrite.DELETE:
            try:
                shutil.rmtree(self.path)
            except OSError as e:
                raise RunDirError(f"cannot remove the earlier run {self.path} ({e.strerror or e}); remove it "
                                  "yourself or choose another output_dir") from e
        if plan.action is Action.CONTINUE:
            # the results describe the old weights: an interrupted continuation reads as unfinished
            for stale in (self.summary, self.eval_results, self.eval_predictions, self.report):
                stale.unlink(missing_ok=True)
        self.create()
        self._write_marker(cfg)
        return plan

    def move_aside(self) -> Path:
        """Rename the folder to ``<name>.old-<UTC time>`` beside it (atomic, nothing copied)."""
        stamp = _utc_stamp()
        target = self.path.with_name(f"{self.path.name}.old-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.old-{stamp}-{n}")
        try:
            self.path.rename(target)
        except OSError as e:
            raise RunDirError(f"cannot move the earlier run {self.path} aside to {target} ({e.strerror or e}); "
                              "move or delete it yourself, or choose another output_dir") from e
        return target

    def check_writable(self) -> None:
        """Would creating and writing the folder work? Reads only: the nearest existing folder's
        permissions and whether its filesystem is read-only. ``create`` makes sure by writing."""
        existing = next((p for p in (self.path, *self.path.parents) if p.exists()), None)
        if existing is None:
            return
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK) and os.statvfs(existing).f_blocks:
            return
        if not existing.is_dir():
            why = f"{existing} is a file, not a folder"
        elif os.statvfs(existing).f_blocks == 0:  # /proc, /sys: root may "write" there, but no file can be made
            why = f"{existing} is on a filesystem that stores no files"
        elif os.statvfs(existing).f_flag & os.ST_RDONLY:
            why = "Read-only file system"
        else:
            why = "Permission denied"
        raise self._unwritable(why)

    def create(self) -> None:
        """Create the folder and write a probe file in it; ``RunDirError`` if either fails."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            blocker = next((p for p in self.path.parents if p.exists()), None)
            why = f"{blocker} is a file, not a folder" if blocker and not blocker.is_dir() else (e.strerror or str(e))
            raise self._unwritable(why) from e

    def _unwritable(self, why: str) -> RunDirError:
        return RunDirError(f"output_dir {self.path} is not writable ({why}); choose another output_dir "
                           "(nothing was loaded or trained)")

    def _write_marker(self, cfg: RunConfig) -> None:

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        old: dict[str, Any] = {}
        if self.marker.is_file():
            try:
                old = json.loads(self.marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
        mark = {"sftkit": __version__, "config_digest": config_digest(cfg),
                "created": old.get("created", now) if isinstance(old, dict) else now, "claimed": now}
        tmp = self.marker.with_name(f".{MARKER}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(mark, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.marker)
