"""``sft export``: a run folder -> a standalone, verified model folder.

Exit codes: 0 success, 1 the written model failed verification (kept as ``OUT.unverified``),
2 user error, 3 ``--gguf``: the HF folder was written and verified but GGUF conversion is
unavailable or failed, 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sftkit.cli.boundary import err
from sftkit.core.errors import ExportError, GgufNotWritten, VerificationFailed
from sftkit.export.merge import GGUF_HELP, export_run, find_gguf_converter, to_gguf


def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder (config.yaml + adapter/ or model/).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (a standalone Hugging Face model).")],
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32 (default: the run's model.dtype).")] = None,
    gguf: Annotated[bool, typer.Option("--gguf", help="Also convert to GGUF (needs llama.cpp's converter).")]
    = False,
    force: Annotated[bool, typer.Option(help="Replace --out if it is an earlier sft export (never any other "
                                             "folder, nor one that is, holds or lies in the run or base model).")]
    = False,
) -> None:
    """Merge a run's adapter into its base model and write a standalone, verified model folder."""

    if gguf and find_gguf_converter() is None:
        # Said up front, so nobody waits for a merge to learn this; the HF folder is still written.
        err.print(f"[yellow]warning:[/] {GGUF_HELP}", highlight=False, soft_wrap=True)
    res = export_run(run, out, dtype=dtype, force=force, log=lambda m: err.print(m, highlight=False))
    if not res.ok:
        raise VerificationFailed(f"verification failed (max |logit diff| merge {res.merge_diff}, reload "
                                 f"{res.reload_diff:.2e}, tolerance 1e-4); the unverified folder is {res.out}")
    err.print(f"[green]exported[/] {res.out} ({res.kind}, {res.dtype}); template: {res.template_note}",
              highlight=False, soft_wrap=True)
    err.print(f"generation_config eos_token_id = {res.eos_token_ids}", highlight=False)
    if gguf:
        try:
            path = to_gguf(res.out, res.dtype)
        except ExportError as e:
            raise GgufNotWritten(f"GGUF not written: {e}") from None
        err.print(f"[green]gguf[/] {path}", highlight=False)
