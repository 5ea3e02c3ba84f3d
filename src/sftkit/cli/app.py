"""The ``sft`` app: every command group registered in workflow order, behind one error boundary.

Command implementations that need torch or transformers are imported inside the command
functions, so that ``sft --help`` answers instantly; everything else is imported here.
"""

from __future__ import annotations

import sys

from sftkit import __version__
from sftkit.cli.boundary import command_group
from sftkit.cli.console import console_cmd
from sftkit.cli.data import app as data_app
from sftkit.cli.download import download_cmd
from sftkit.cli.estimate import estimate_cmd
from sftkit.cli.eval import eval_cmd, report_cmd
from sftkit.cli.export import export_cmd
from sftkit.cli.infer import chat_cmd, generate_cmd, serve_cmd
from sftkit.cli.installation import DISTRIBUTION
from sftkit.cli.serve_report import serve_report_cmd
from sftkit.cli.template import app as template_app
from sftkit.cli.train import config_help, train_cmd
from sftkit.cli.workflow import demo_cmd, run_cmd

app = command_group("sftkit: supervised fine-tuning of language models, from data check to served model. "
                    "`sft --version` prints the version.")

# The order `sft --help` lists them: the workflow first.
app.command("train", epilog=config_help())(train_cmd)
app.command("chat")(chat_cmd)
app.command("run")(run_cmd)
app.command("demo")(demo_cmd)
app.add_typer(data_app, name="data", help="Check, analyse, de-duplicate, lint and split data files; documents -> "
              "reviewed Q&A pairs (extract, synth, sample, review, agree, augment).")
app.add_typer(template_app, name="template", help="List, render, show and check chat templates.")
app.command("eval", help="Evaluate a model or run on a test file, optionally against a baseline.")(eval_cmd)
app.command("report", help="Write report.html for a run folder.")(report_cmd)
app.command("generate", help="Answer every prompt of a data file (resumable).")(generate_cmd)
app.command("serve", help="OpenAI-compatible HTTP server for a model or run (or two: a canary release).")(serve_cmd)
app.command("serve-report", help="Compare the models of a server's request log (canary vs stable).")(serve_report_cmd)
app.command("export", help="Merge a run into a standalone, verified model folder.")(export_cmd)
app.command("estimate", help="Memory and time before you train, with recommendations.")(estimate_cmd)
app.command("download", help="Fetch a hub model (HF, mirror, ModelScope) into the local cache.")(download_cmd)
app.command("console", help="Web console: configure, launch, watch and compare runs; chat.")(console_cmd)


# Options that may stand alone, and the value that means: `--resume` (continue the last checkpoint) and
# `--gguf` (it was a switch before it took a type).
_BARE = {"--resume": "auto", "--gguf": "f16"}


def _normalise_argv(argv: list[str]) -> list[str]:
    """Give a bare ``--resume`` / ``--gguf`` its default value."""
    out = list(argv)
    i = 0
    while i < len(out):
        if out[i] in _BARE and (i + 1 == len(out) or out[i + 1].startswith("-") or "=" in out[i + 1]):
            out.insert(i + 1, _BARE[out[i]])
        i += 1
    return out


def main() -> None:
    argv = sys.argv[1:]
    if argv in (["--version"], ["-V"]):
        print(f"{DISTRIBUTION} {__version__}")  # the version is written once: sftkit/__init__.py
        return
    app(args=_normalise_argv(argv), prog_name="sft")


if __name__ == "__main__":
    main()
