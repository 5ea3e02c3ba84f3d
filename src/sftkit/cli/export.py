"""``sft export``: a run folder -> a standalone, verified model folder.

Exit codes: 0 success; 1 the written model failed verification (kept as ``OUT.unverified``, or the
GGUF as ``<name>.unverified.gguf``); 2 user error; 3 ``--gguf``: the HF folder was written and
verified, but no GGUF was (the message says why); 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sftkit.cli.boundary import err
from sftkit.cli.options import check_device
from sftkit.core.errors import UsageError, VerificationFailed
from sftkit.export.gguf import export_gguf
from sftkit.export.merge import ExportResult, export_run


def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder (config.yaml + adapter/ or model/).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (a standalone Hugging Face model).")],
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32 (default: the run's model.dtype).")] = None,
    gguf: Annotated[str | None, typer.Option("--gguf", metavar="TYPE", help=(
        "Also write a GGUF file into --out, verified by reloading it with transformers: f16, bf16 or q8_0 (written by "
        "sftkit, no llama.cpp needed), f32, or q4_k_m / q5_k_m / q4_k_s / q5_k_s / q6_k / q3_k_m / q2_k (made from "
        "an f16 file by llama.cpp's llama-quantize, which must be on PATH or in LLAMA_QUANTIZE). The numbers go to "
        "<name>-<type>.verification.json. A bare --gguf means f16."))] = None,
    ollama: Annotated[str | None, typer.Option("--ollama", metavar="NAME", help=(
        "With --gguf: also write an Ollama Modelfile beside the GGUF (TEMPLATE translated from the run's chat "
        "template, PARAMETER stop for every stop string, SYSTEM from the template's default system prompt) and "
        "print the `ollama create NAME -f Modelfile` line."))] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it is an earlier sft export (never any other "
                                             "folder, nor one that is, holds or lies in the run or base model).")]
    = False,
    device: Annotated[str, typer.Option("--device", help="Where the merge and its float32 logit check run: auto, "
                                                         "cpu, cuda, cuda:N or mps (the CPU when the float32 "
                                                         "weights do not fit on the card).")] = "auto",
) -> None:
    """Merge a run's adapter into its base model and write a standalone, verified model folder (and GGUF)."""
    log = lambda m: err.print(m, highlight=False)  # noqa: E731
    if ollama and not gguf:
        raise UsageError("--ollama NAME needs --gguf TYPE (the Modelfile points at the GGUF file): add --gguf q8_0")
    check_device(device)
    if gguf:
        g = export_gguf(run, out, gguf, ollama_name=ollama, force=force, dtype=dtype, log=log, device=device)
        if g.export is not None:
            _report(g.export)
        q, e = g.verification["quality"], g.verification["exactness"]
        err.print(f"[green]gguf[/] {g.path} ({g.path.stat().st_size / 1e6:.0f} MB): exact vs rounded weights "
                  f"{e.get('max_abs_diff', 'n/a')}, max |Δ| vs original {q['max_abs_diff']:.3g}, top-1 "
                  f"{q['top1_agreement']:.2%} ({q['top1_agreement_confident']:.2%} where the gap ≥ 0.5), mean KL "
                  f"{q['mean_kl']:.1e}; {g.verification_file.name}", highlight=False, soft_wrap=True)
        for n in g.notes:
            err.print(f"note: {n}", highlight=False, soft_wrap=True)
        if g.ollama_command:
            print(g.ollama_command)  # stdout: the one line to run
        return
    _report(export_run(run, out, dtype=dtype, force=force, log=log, device=device))


def _report(res: ExportResult) -> None:
    if not res.ok:
        raise VerificationFailed(f"verification failed (max |logit diff| merge {res.merge_diff}, reload "
                                 f"{res.reload_diff:.2e}, tolerance 1e-4); the unverified folder is {res.out}")
    err.print(f"[green]exported[/] {res.out} ({res.kind}, {res.dtype}); template: {res.template_note}",
              highlight=False, soft_wrap=True)
    err.print(f"generation_config eos_token_id = {res.eos_token_ids}", highlight=False)
