"""``sft train``: a config -> a run folder (``sftkit.train.recipe.run``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sftkit.cli.boundary import err
from sftkit.core.configio import load_config
from sftkit.core.fielddocs import field_docs
from sftkit.core.rundir import Overwrite
from sftkit.train.distributed import DEFAULT_TIMEOUT, ENV_TIMEOUT, session, timeout_from_env
from sftkit.train.launch import Launch, launch

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
    nnodes: Annotated[int, typer.Option(help="Machines in the run: start the same command on each, with its "
                                             "own --node-rank (docs/multinode.md).")] = 1,
    node_rank: Annotated[int, typer.Option(help="This machine's number, 0 to nnodes-1; node 0 hosts the "
                                                "rendezvous.")] = 0,
    master_addr: Annotated[str | None, typer.Option(help="Address of node 0, as every node reaches it.")] = None,
    master_port: Annotated[int, typer.Option(help="Port of the rendezvous on node 0 (the same on every "
                                                  "node).")] = 29500,
    rdzv_timeout: Annotated[float | None, typer.Option(
        help="Seconds a node waits for the others (to join, at each start-up check) and for a silent node before "
             f"every node stops (default: ${ENV_TIMEOUT}, else {DEFAULT_TIMEOUT:g}).")] = None,
) -> None:
    """Fine-tune a model as the config says and write a run folder.

    output_dir must be new, empty, or a run of this config; a finished run needs --resume or --overwrite."""
    if rdzv_timeout is not None:  # this process's ranks, and those a launcher starts, read it from there
        os.environ[ENV_TIMEOUT] = f"{rdzv_timeout:g}"
    spec = Launch(nproc, nnodes, node_rank, master_addr, master_port, timeout_from_env())
    spec.check()
    if spec.needed:
        load_config(config, overrides or [])  # a bad config fails here, before any node waits for this one
        cmd = ["-m", "sftkit.cli", "train", str(config), *(overrides or [])]
        if resume:
            cmd += ["--resume", resume]
        cmd += [flag for flag, on in (("--force", force), ("--overwrite", overwrite)) if on]
        raise typer.Exit(launch(spec, cmd))
    with session():  # under a launcher: every rank of the run stops when one fails (one process: nothing)
        cfg = load_config(config, overrides or [])  # before importing the trainer: a bad config fails in a second
        from sftkit.train.recipe import run  # heavy: torch, transformers

        run(cfg, resume=resume, console=err, force=force,
            overwrite=Overwrite.MOVE_ASIDE if overwrite else Overwrite.NO)
