"""``sft run`` and ``sft demo``: the whole workflow (``sftkit.pipeline``) in one command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sftkit.cli.boundary import err
from sftkit.cli.options import DEVICE_HELP, check_device
from sftkit.cli.train import OVERWRITE_HELP
from sftkit.core.rundir import Overwrite
from sftkit.pipeline import DEMO_EXAMPLE, resolve_example, run_pipeline

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line last.")]
EvalDeviceOpt = Annotated[str | None, typer.Option(
    "--device", help=DEVICE_HELP + " For the baseline and tuned evaluations (eval.device; default: the config's, "
                                   "auto). Training runs where its launcher puts it.")]


def _pipeline(config: Path, overrides: list[str] | None, as_json: bool, previous: Overwrite,
              device: str | None = None) -> None:
    """``previous``: what happens to an earlier run in the output folder. ``device``: eval.device."""
    if device is not None:
        check_device(device)  # in --device's words, before anything runs
        overrides = [*(overrides or []), f"eval.device={device}"]
    out = run_pipeline(config, overrides or [], console=err, overwrite=previous)
    if as_json:
        print(json.dumps(out, ensure_ascii=False))


def run_cmd(
    example: Annotated[str, typer.Argument(help="Example name (api_assistant, ...), folder, or config file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides: train.max_steps=2 ...")] = None,
    as_json: JsonOpt = False,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
    device: EvalDeviceOpt = None,
) -> None:
    """The whole workflow: data check, baseline, training, evaluation, report."""
    _pipeline(resolve_example(example), overrides, as_json, Overwrite.MOVE_ASIDE if overwrite else Overwrite.NO,
              device)


def demo_cmd(
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides for the demo config.")] = None,
    as_json: JsonOpt = False,
    device: EvalDeviceOpt = None,
) -> None:
    """Fine-tune the bundled model to answer with a company's API calls, and show before/after."""
    config = resolve_example(DEMO_EXAMPLE)
    has_out = any(o.startswith("output_dir=") for o in overrides or [])
    # the demo's folder holds only its own re-runnable run: an earlier one is deleted, not kept
    _pipeline(config, [*(overrides or []), *([] if has_out else ["output_dir=runs/demo"])], as_json,
              Overwrite.DELETE, device)
