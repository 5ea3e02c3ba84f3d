"""``sft download REF``: the one explicit fetch of a hub model into the local cache.

After it, ``sft train`` / ``eval`` / ``serve`` with the same reference resolve
from the cache without any network access.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from sftkit.hub.sources import describe, download, hf_endpoint, parse_ref

err = Console(stderr=True)


def download_cmd(
    ref: Annotated[str, typer.Argument(help="ORG/NAME[@REV] (Hugging Face or the HF_ENDPOINT mirror) "
                                            "or modelscope:ORG/NAME[@REV].")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (same as REF@REV).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
    = False,
) -> None:
    """Download a model (weights, tokenizer, chat template) into the hub cache; run again to resume."""
    hub_ref = parse_ref(ref, revision)
    where = "ModelScope" if hub_ref.source == "modelscope" else hf_endpoint()
    err.print(f"downloading {hub_ref} from {where} ...", highlight=False)
    try:
        snap = download(hub_ref)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: run `sft download {ref}` again to resume (finished files are "
                                "kept)") from None
    err.print(f"[green]ready[/] {snap.path}", highlight=False, soft_wrap=True)
    err.print(snap.template_note(), highlight=False, soft_wrap=True)
    err.print(f"use it as model.name_or_path: {hub_ref} (resolved from the cache, offline)", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(describe(snap), ensure_ascii=False) + "\n")
        sys.stdout.flush()
