"""``sft chat``, ``sft generate`` and ``sft serve``: the commands that answer with a model.

Exit codes: 0 success, 2 user error (bad path or option, unreadable data, unknown model, vllm not
installed; printed by the boundary in ``cli/boundary.py``), 130 interrupted.
Heavy imports (torch, transformers, fastapi) happen inside the commands so that ``sft --help``
stays instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from sftkit.cli.boundary import err
from sftkit.cli.options import DeviceOpt, check_device
from sftkit.core.errors import UsageError
from sftkit.core.vocab import BUNDLED_ALIAS
from sftkit.data import write_rejects
from sftkit.hub.device import check_vllm
from sftkit.hub.models import served_name
from sftkit.infer.canary import Canary
from sftkit.infer.requestlog import DEFAULT_PATH as DEFAULT_REQUEST_LOG
from sftkit.infer.requestlog import RequestLog
from sftkit.infer.vllm_serve import vllm_command

if TYPE_CHECKING:
    from sftkit.infer.engine import Engine


def chat_cmd(
    model: Annotated[str, typer.Argument(help="Run folder, exported folder, or model reference.")] = BUNDLED_ALIAS,
    prompt: Annotated[str | None, typer.Option(help="Answer this one prompt and exit (for scripts).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.9,
    device: DeviceOpt = "auto",
) -> None:
    """Talk to a model in the terminal (streaming), or answer one --prompt."""
    from sftkit.infer.chat import run_chat  # heavy: torch

    check_device(device)
    run_chat(model, prompt=prompt, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
             top_p=top_p, device=device)


def load_engine(ref: str, dtype: str | None = None, batch_size: int = 16, template: str | None = None,
                device: str = "auto") -> Engine:
    """A model reference, exported folder or run folder (LoRA or full), with the run's template, on the
    device the rule picks for ``device`` (``dtype`` None: the rule's)."""
    from sftkit.infer.engine import Engine

    return Engine.from_ref(ref, dtype, batch_size, template, device=device)


def generate_cmd(
    model: Annotated[str, typer.Argument(help="Run folder, exported folder, or model reference.")],
    data: Annotated[Path, typer.Option("--data", help="Prompts: any data layout sft reads (the final reply, "
                                                      "if any, becomes `reference`).")],
    out: Annotated[Path, typer.Option("--out", help="Output JSON Lines (+ OUT.meta.json); rows whose input is "
                                                    "unchanged are kept, the rest answered (resume). Only an "
                                                    "answers file of sft generate is resumed.")],
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (deterministic).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with temperature > 0).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward batch (and per flush to --out).")] = 16,
    format: Annotated[str | None, typer.Option("--format", help="Force the data layout (default: detect).")] = None,
    template: Annotated[str | None, typer.Option(help="Chat template (default: the run's, else the model's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    device: DeviceOpt = "auto",
    as_training_data: Annotated[bool, typer.Option(
        "--as-training-data", help="Write each row in the messages layout with the answer as the assistant turn: "
                                   "a teacher's answers become SFT data for a student (`sft train` reads OUT).")
    ] = False,
) -> None:
    """Answer every prompt of a data file with a model; resumable, one JSON line per row."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sftkit.infer.answers import open_answers, producer, rejects_path, run_generate
    from sftkit.infer.engine import GenParams

    if not data.is_file():
        raise UsageError(f"--data {data}: no such file")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    check_device(device)
    answers = open_answers(data, out)  # a foreign --out is refused before the model loads
    params = GenParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    with err.status(f"loading {model} ..."):
        engine = load_engine(model, batch_size=batch_size, template=template, device=device)
    progress = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, transient=False)
    task = progress.add_task("generate", total=None)
    with progress:
        summary = run_generate(
            engine, data, out, params, format=format, answers=answers,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda done, _n: progress.update(task, completed=done), as_training_data=as_training_data,
            made_by=producer(model, engine, params),
        )
    rej_note = ""
    if summary.rejects:
        rej_path = rejects_path(out)  # checked by open_answers: absent or an earlier rejects file
        write_rejects(summary.rejects, rej_path)
        for r in summary.rejects[:5]:
            err.print(f"[yellow]rejected[/] {escape(r.where)}: {escape(r.reason)}", highlight=False, soft_wrap=True)
        if len(summary.rejects) > 5:
            err.print(f"[yellow]... and {len(summary.rejects) - 5} more[/]")
        rej_note = f", {len(summary.rejects)} rejected (see {rej_path})"
    elif rejects_path(out).is_file():  # an earlier run's rejects (checked to be ours): none are left now
        rejects_path(out).unlink()
    drop_note = (f", {summary.dropped} earlier answers dropped (their input row changed or is gone)"
                 if summary.dropped else "")
    err.print(f"{summary.total} rows: {summary.generated} generated, {summary.skipped} already in {out}{rej_note}"
              f"{drop_note}", highlight=False)
    if summary.cut_off:
        err.print(f"[yellow]{summary.cut_off} answers stopped at --max-new-tokens {max_new_tokens} "
                  "(finish_reason length) and end mid-text; raise it, or drop those rows before training[/]",
                  highlight=False)


def serve_cmd(
    model: Annotated[str, typer.Argument(help="Run folder, exported folder, or model reference.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for all: needs --api-key, "
                                           "or --insecure-no-auth).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require 'Authorization: Bearer KEY' on every path but /health "
                                                     "(default: $SFTKIT_API_KEY, else no key).")] = None,
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="Listen beyond loopback without an API key: anyone who reaches the port "
                                   "can use the model.")] = False,
    engine: Annotated[str, typer.Option(help="transformers (built in) or vllm (hands over to `vllm serve`).")]
    = "transformers",
    max_batch: Annotated[int, typer.Option(help="Most requests decoded together (and concurrent streams).")] = 16,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    dtype: Annotated[str, typer.Option(help="Weights dtype: auto (bf16 on GPUs that have it, else fp16; fp32 on "
                                            "the CPU), float32, bfloat16, float16.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="transformers engine: where the model runs: auto, "
                                                         "cpu, cuda, cuda:N or mps (see sft chat --help).")]
    = "auto",
    canary_of: Annotated[str | None, typer.Option(
        "--canary-of", help="Canary release: MODEL is the new model and this the old one; requests for the old "
                            "model's id go to MODEL for --share of the users (sticky per user: the request's "
                            "`user`, else the X-User-Id header, else the client address). Both models are loaded.")]
    = None,
    share: Annotated[float, typer.Option(help="With --canary-of: the share of users (0-1) the new model answers.")]
    = 0.1,
    request_log: Annotated[Path, typer.Option(help="Append one JSON line per request (model, latency, tokens) "
                                                   "here, for `sft serve-report`.")] = DEFAULT_REQUEST_LOG,
    no_request_log: Annotated[bool, typer.Option("--no-request-log", help="Keep no request log.")] = False,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models,
    /metrics), or two in a canary release (--canary-of)."""
    api_key = api_key or os.environ.get("SFTKIT_API_KEY") or None
    if engine not in ("transformers", "vllm"):
        raise UsageError(f"--engine {engine}: use transformers or vllm")
    if max_batch < 1 or max_tokens_limit < 1:
        raise UsageError("--max-batch and --max-tokens-limit must be at least 1")
    if not 0.0 <= share <= 1.0:
        raise UsageError(f"--share {share}: give the share of users as a number from 0 to 1 (0.1 = 10%)")
    if canary_of is not None and engine == "vllm":
        raise UsageError("--canary-of needs --engine transformers (vLLM serves one model per server; run two "
                         "and split traffic in your proxy)")
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    if not api_key and not _is_loopback(host):  # checked before loading: refused in a second, not a minute
        if not insecure_no_auth:
            raise UsageError(f"--host {host} is reachable from other machines and no API key is set: pass --api-key "
                             "KEY (or set SFTKIT_API_KEY), or --insecure-no-auth to serve without one.")
        err.print(f"[bold yellow]warning:[/] no API key: anyone who can reach {url} can use this model "
                  "(--insecure-no-auth)", highlight=False, soft_wrap=True)
    if engine == "vllm":
        _exec_vllm(model, host, port, api_key, max_batch)
        return
    check_device(device, dtype)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("sft serve needs fastapi and uvicorn: pip install 'sftkit-llm[serve]'") from None
    from sftkit.infer.server import serve

    log = None if no_request_log else RequestLog(request_log)  # a refused path stops us before any loading
    with err.status(f"loading {model} ..."):
        eng = load_engine(model, dtype=dtype, batch_size=max_batch, device=device)
    canary = None
    if canary_of is not None:
        with err.status(f"loading {canary_of} (the stable model) ..."):
            old = load_engine(canary_of, dtype=dtype, batch_size=max_batch, device=device)
        name = served_name(model)
        canary = Canary(eng, name if name != served_name(canary_of) else f"{name}-canary", share, {model})
        eng, model = old, canary_of
    key_note = ", API key required" if api_key else ""
    where = eng.device_info.describe() if eng.device_info else "cpu"
    err.print(f"serving [bold]{escape(served_name(model))}[/] on {url} ({where}; "
              f"max batch {max_batch}, max_tokens <= {max_tokens_limit}{key_note})", highlight=False, soft_wrap=True)
    if canary is not None:
        err.print(f"canary: [bold]{escape(canary.name)}[/] answers {share:.0%} of the users of "
                  f"{escape(served_name(model))} (sticky per user; ask for {escape(canary.name)} by name to try it); "
                  "both models are in memory", highlight=False, soft_wrap=True)
    err.print(f"metrics: {url.removesuffix('/v1')}/metrics; request log: "
              f"{escape(str(request_log)) if log else 'off'}", highlight=False, soft_wrap=True)
    serve(eng, model, host=host, port=port, api_key=api_key, max_batch=max_batch,
          max_tokens_limit=max_tokens_limit, canary=canary, request_log=log)


def _is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost).
    Any other name may resolve to an outside interface, so it counts as beyond loopback."""
    import ipaddress

    name = host.strip("[]")
    try:
        return name.lower() == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _exec_vllm(model: str, host: str, port: int, api_key: str | None, max_batch: int) -> None:

    check_vllm()  # the same check as `sft eval --engine vllm`: the package and a CUDA GPU
    cmd = vllm_command(model, host, port, api_key, max_batch)
    shown = [("***" if i and cmd[i - 1] == "--api-key" else c) for i, c in enumerate(cmd)]
    err.print(f"exec: {' '.join(shown)}", highlight=False, soft_wrap=True)
    os.execvp(cmd[0], cmd)  # replaces this process: vLLM owns the port, signals and exit code
