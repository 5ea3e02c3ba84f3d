"""``sft train``: a config -> a run folder (``sftkit.train.recipe.run``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sftkit.cli.boundary import err
from sftkit.core.configio import load_config
from sftkit.core.fielddocs import field_docs
from sftkit.core.rundir import Overwrite

OVERWRITE_HELP = ("Train from scratch although output_dir holds an earlier sftkit run: it is moved aside to "
                  "<output_dir>.old-<UTC time> (printed), never mixed with the new one.")


def config_help() -> str:
    lines = ["Config fields (YAML keys; override any with dotted key=value after CONFIG):\n\n"]
    for fd in field_docs():
        lines.append(escape(f"  {fd.key} ({fd.type}, default {fd.default_text()}): {fd.doc}\n\n"))
    return "".join(lines)


def train_cmd(
    config: Annotated[Path, typer.Argument(help="Run config YAML (or a folder holding config.yaml).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides: train.max_steps=2 ...")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue from the last checkpoint ('auto') or a path.")] = None,
    nproc: Annotated[int, typer.Option(help="Data-parallel processes on this machine (torchrun).")] = 1,
    force: Annotated[bool, typer.Option(
        help="Train even if the memory estimate says it will not fit; resume even if inputs changed.")] = False,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """Fine-tune a model as the config says and write a run folder.

    output_dir must be new, empty, or a run of this config; a finished run needs --resume or --overwrite."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        # --standalone: a local rendezvous on a free port (no clash with another run on 29500)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "sftkit.cli", "train", str(config), *(overrides or [])]
        if resume:
            cmd += ["--resume", resume]
        cmd += [flag for flag, on in (("--force", force), ("--overwrite", overwrite)) if on]
        raise typer.Exit(subprocess.call(cmd))
    cfg = load_config(config, overrides or [])  # before importing the trainer: a bad config fails in a second
    from sftkit.train.recipe import run  # heavy: torch, transformers

    run(cfg, resume=resume, console=err, force=force, overwrite=Overwrite.MOVE_ASIDE if overwrite else Overwrite.NO)
