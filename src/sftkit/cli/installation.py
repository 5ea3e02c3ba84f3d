"""Refuse to start when another project's ``sftkit`` package shares this environment.

sftkit is distributed as ``sftkit-llm``: PyPI's ``sftkit`` is an unrelated project (SFTTech's
web-service toolkit) that also installs a top-level ``sftkit`` package. pip installs both into one
environment without a word, and the one installed last replaces the other's shared files
(``sftkit/__init__.py``, ``sftkit/__main__.py``); from another folder on ``sys.path`` either can
shadow the other. Running on such a mix fails somewhere deep, or runs someone else's code, so
``sft`` stops at start-up with one sentence instead.

Standard library only and no other sftkit import: ``sftkit.cli`` runs this before anything reads
``sftkit/__init__.py``, which the other project may have replaced with its own (empty) file.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

DISTRIBUTION = "sftkit-llm"
# `sft = sftkit.cli:main` marks an install of this project from before the rename (named `sftkit`,
# e.g. an old editable checkout): the same code, not a clash.
OUR_SCRIPT = ("sft", "sftkit.cli:main")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _provides_sftkit(dist: md.Distribution) -> bool:
    top = dist.read_text("top_level.txt")
    if top is not None:
        return "sftkit" in top.split()
    # wheels made by other build back-ends (uv, hatch, poetry: the other sftkit is one) have no top_level.txt
    record = dist.read_text("RECORD") or ""
    return record.startswith("sftkit/") or "\nsftkit/" in record


def _is_ours(dist: md.Distribution) -> bool:
    if _normalise(dist.metadata["Name"] or "") == DISTRIBUTION:
        return True
    return any(ep.group == "console_scripts" and (ep.name, ep.value) == OUR_SCRIPT for ep in dist.entry_points)


def foreign_distributions() -> list[md.Distribution]:
    """Installed distributions, other than this project, that provide a top-level ``sftkit`` package.

    Reads one small file per installed distribution (~10 ms for 140 of them), not every RECORD
    (``packages_distributions()`` takes ~200 ms)."""
    return [d for d in md.distributions() if _provides_sftkit(d) and not _is_ours(d)]


def clash_message() -> str | None:
    """One sentence naming the other distribution(s) and the fix, or ``None`` when there is none."""
    found = foreign_distributions()
    if not found:
        return None
    names = sorted({d.metadata["Name"] for d in found})
    where = "; ".join(f"{d.metadata['Name']} {d.version} in {d.locate_file('')}" for d in found)
    return (f"another project's `sftkit` package is installed in this environment ({where}), and it shares the "
            f"`sftkit` import name with sftkit ({DISTRIBUTION}), so either may have overwritten or shadowed the "
            f"other's files; fix: `pip uninstall {' '.join(names)}`, then "
            f"`pip install --force-reinstall --no-deps {DISTRIBUTION}` (or the wheel or folder you installed it from: "
            f"uninstalling removes the shared files)")


def refuse_foreign_sftkit() -> None:
    """Exit 2 with the message when another project's ``sftkit`` is installed."""
    message = clash_message()
    if message:
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)
