"""Generate ``configs/finetune_reference.yaml``: every field with its default and meaning.

``python -m sftkit.core.reference > configs/finetune_reference.yaml``; a test keeps
the shipped file in sync with the schema.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from sftkit.core.fielddocs import FieldDoc, field_docs

HEADER = """\
# sftkit run config: every field, its default and its meaning.
# Generated from the config schema (python -m sftkit.core.reference); do not edit by hand.
# Paths are relative to this file. Override any key on the command line:
#   sft train this.yaml train.max_steps=10 output_dir=runs/try
"""


def _value(fd: FieldDoc) -> str:
    if fd.required:
        return "train.jsonl   # required"
    v = fd.default.value if isinstance(fd.default, Enum) else fd.default
    if isinstance(v, Path):
        v = str(v)
    return json.dumps(v, ensure_ascii=False)


def reference_yaml() -> str:
    lines = [HEADER]
    section = ""
    for fd in field_docs():
        head, _, leaf = fd.key.rpartition(".")
        if head != section:
            section = head
            lines.append(f"\n{head}:" if head else "")
        indent = "  " if head else ""
        lines.append(f"{indent}# {fd.doc} [{fd.type}]")
        lines.append(f"{indent}{leaf}: {_value(fd)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_yaml(), end="")
