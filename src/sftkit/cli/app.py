"""The ``sft`` command: one Typer app; heavy modules are imported inside commands
so that ``sft --help`` answers instantly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sftkit.cli.console import console_cmd
from sftkit.cli.data import app as data_app
from sftkit.cli.download import download_cmd
from sftkit.cli.estimate import estimate_cmd
from sftkit.cli.eval import eval_cmd, report_cmd
from sftkit.cli.template import app as template_app
from sftkit.cli.use import export_cmd, generate_cmd, serve_cmd
from sftkit.core.config import field_docs

err = Console(stderr=True)
BUNDLED = "smollm2-135m-instruct"
OVERWRITE_HELP = ("Train from scratch although output_dir holds an earlier sftkit run: it is moved aside to "
                  "<output_dir>.old-<UTC time> (printed), never mixed with the new one.")
app = typer.Typer(
    help="sftkit: supervised fine-tuning of language models, from data check to served model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(msg: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _config_help() -> str:
    lines = ["Config fields (YAML keys; override any with dotted key=value after CONFIG):\n\n"]
    for fd in field_docs():
        lines.append(escape(f"  {fd.key} ({fd.type}, default {fd.default_text()}): {fd.doc}\n\n"))
    return "".join(lines)


def _user_errors() -> tuple[type[BaseException], ...]:
    from sftkit.core.config import ConfigError
    from sftkit.core.errors import TrainError
    from sftkit.data import DataError
    from sftkit.estimate import DoesNotFit
    from sftkit.hub.models import ModelNotFound
    from sftkit.hub.safety import Untrusted
    from sftkit.templates.base import TemplateError
    from sftkit.train.methods import MethodUnavailable

    return (ConfigError, DataError, DoesNotFit, MethodUnavailable, ModelNotFound, TemplateError, TrainError,
            Untrusted)


@app.command(epilog=_config_help())
def train(
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
    from sftkit.core.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides or [])  # before importing the trainer: a bad config fails in a second
    except ConfigError as e:
        raise fail(str(e)) from None
    from sftkit.core.rundir import Overwrite
    from sftkit.train.recipe import run

    try:
        run(cfg, resume=resume, console=err, force=force, overwrite=Overwrite.MOVE_ASIDE if overwrite else Overwrite.NO)
    except _user_errors() as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt as e:
        raise fail(str(e) or "interrupted", 130) from None


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Run folder, exported folder, or model reference.")] = BUNDLED,
    prompt: Annotated[str | None, typer.Option(help="Answer this one prompt and exit (for scripts).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.9,
) -> None:
    """Talk to a model in the terminal (streaming), or answer one --prompt."""
    from sftkit.infer.chat import run_chat

    try:
        run_chat(model, prompt=prompt, system=system, max_new_tokens=max_new_tokens,
                 temperature=temperature, top_p=top_p)
    except _user_errors() as e:
        raise fail(str(e)) from None


def _pipeline(config: Path, overrides: list[str] | None, as_json: bool, previous: str = "no") -> None:
    """``previous``: what happens to an earlier run in the output folder (``sftkit.core.rundir.Overwrite``)."""
    import json

    from sftkit.core.rundir import Overwrite
    from sftkit.pipeline import run_pipeline

    try:
        out = run_pipeline(config, overrides or [], console=err, overwrite=Overwrite(previous))
    except (*_user_errors(), FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    if as_json:
        print(json.dumps(out, ensure_ascii=False))


@app.command("run")
def run_cmd(
    example: Annotated[str, typer.Argument(help="Example name (api_assistant, ...), folder, or config file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides: train.max_steps=2 ...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line last.")] = False,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """The whole workflow: data check, baseline, training, evaluation, report."""
    from sftkit.pipeline import resolve_example

    try:
        config = resolve_example(example)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    _pipeline(config, overrides, as_json, "move aside" if overwrite else "no")


@app.command()
def demo(
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides for the demo config.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line last.")] = False,
) -> None:
    """Fine-tune the bundled model to answer with a company's API calls, and show before/after."""
    from sftkit.pipeline import DEMO_EXAMPLE, resolve_example

    try:
        config = resolve_example(DEMO_EXAMPLE)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    has_out = any(o.startswith("output_dir=") for o in overrides or [])
    # the demo's folder holds only its own re-runnable run: an earlier one is deleted, not kept
    _pipeline(config, [*(overrides or []), *([] if has_out else ["output_dir=runs/demo"])], as_json, "delete")


# Registered after train/run/demo/chat so that `sft --help` lists the workflow in order.
app.add_typer(data_app, name="data", help="Check, analyse, de-duplicate, lint and split data files.")
app.add_typer(template_app, name="template", help="List, render, show and check chat templates.")
app.command("eval", help="Evaluate a model or run on a test file, optionally against a baseline.")(eval_cmd)
app.command("report", help="Write report.html for a run folder.")(report_cmd)
app.command("generate", help="Answer every prompt of a data file (resumable).")(generate_cmd)
app.command("serve", help="OpenAI-compatible HTTP server for a model or run.")(serve_cmd)
app.command("export", help="Merge a run into a standalone, verified model folder.")(export_cmd)
app.command("estimate", help="Memory and time before you train, with recommendations.")(estimate_cmd)
app.command("download", help="Fetch a hub model (HF, mirror, ModelScope) into the local cache.")(download_cmd)
app.command("console", help="Web console: configure, launch, watch and compare runs; chat.")(console_cmd)


def _normalise_argv(argv: list[str]) -> list[str]:
    """Let ``--resume`` stand alone (meaning ``--resume auto``)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("-") or "=" in out[i + 1]):
            out.insert(i + 1, "auto")
            break
    return out


def main() -> None:
    app(args=_normalise_argv(sys.argv[1:]), prog_name="sft")


if __name__ == "__main__":
    main()
