"""``sft download REF`` / ``sft download --dataset REF``: the one explicit fetch of a hub model
or dataset into the local cache.

After it, ``sft train`` / ``eval`` / ``serve`` with the same reference (``model.name_or_path`` for
a model, ``data.train`` / ``val`` / ``test`` for a dataset) resolve from the cache without any
network access.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.console import Console

from sftkit.core.errors import UsageError
from sftkit.hub.datasets import DatasetSnapshot, describe_dataset, download_dataset, parse_dataset_ref
from sftkit.hub.sources import describe, download, hf_endpoint, parse_ref

err = Console(stderr=True)


def download_cmd(
    ref: Annotated[str | None, typer.Argument(help="A model: ORG/NAME[@REV] (Hugging Face or the HF_ENDPOINT "
                                                   "mirror) or modelscope:ORG/NAME[@REV].")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="A dataset instead: hf:ORG/NAME[@REV] or modelscope:ORG/NAME[@REV] (the whole "
                          "repository; a :SPLIT suffix is allowed and only checked).")] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit of a model (same as REF@REV).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]
    = False,
) -> None:
    """Download a model (weights, tokenizer, chat template) or a dataset into the hub cache; run again to resume."""
    if (ref is None) == (dataset is None):
        raise UsageError("give a model reference (sft download ORG/NAME) or --dataset hf:ORG/NAME, not both")
    if dataset is not None:
        _emit(_download_dataset(dataset, revision), as_json)
        return
    hub_ref = parse_ref(ref, revision)  # type: ignore[arg-type]
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
    _emit(describe(snap), as_json)


def _download_dataset(text: str, revision: str | None) -> dict[str, Any]:
    ref = parse_dataset_ref(text)
    if revision and ref.revision and revision != ref.revision:
        raise UsageError(f"{text!r} names revision {ref.revision!r} but --revision says {revision!r}; give one")
    if revision:
        ref = replace(ref, revision=revision)
    where = "ModelScope" if ref.source == "modelscope" else hf_endpoint()
    err.print(f"downloading dataset {ref.repo} from {where} ...", highlight=False)
    try:
        snap = download_dataset(ref)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: run `sft download --dataset {ref.repo}` again to resume (finished "
                                "files are kept)") from None
    err.print(f"[green]ready[/] {snap.path}", highlight=False, soft_wrap=True)
    _say_splits(snap)
    return describe_dataset(snap)


def _say_splits(snap: DatasetSnapshot) -> None:
    splits = snap.splits()
    for name, files in sorted(splits.items()):
        err.print(f"  {name}: {len(files)} file(s): {', '.join(files[:4])}{' ...' if len(files) > 4 else ''}",
                  highlight=False, soft_wrap=True)
    if snap.ref.selector or not snap.files:
        snap.select()  # a selector that names nothing (or no data at all) is an error now, not at training time
    example = f"{snap.ref.repo}:{snap.example_split()}" if len(splits) > 1 else str(snap.ref)
    err.print(f"use it as data.train: {example} (read from the cache, offline)", highlight=False, soft_wrap=True)


def _emit(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(info, ensure_ascii=False) + "\n")
        sys.stdout.flush()
