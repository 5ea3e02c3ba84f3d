"""Where a command writes: never over what is not its own.

Every command that writes where the user points (``--out``) follows two rules:

1. The output never overlaps an input or a folder the command reads: not the same
   path, not inside it, not above it. Paths are compared as real paths (symlinks
   resolved), so a link or a ``..`` cannot sneak past (``refuse_overlap``,
   ``same_file``).
2. Existing content is replaced (or cut) only when it is recognisably the command's
   own earlier output; the caller says how to recognise it. Anything else is refused
   and left byte for byte as it was (``check_replaceable_dir``); a replacement swaps
   folders so that a crash never leaves neither (``replace_dir``).

A refusal is a ``RefusedPath``, a ``ValueError``: the CLIs print its one sentence and
exit 2.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from sftkit.core.errors import RefusedPath


def real(path: Path) -> Path:
    """``path`` with every symlink resolved (also when its last parts do not exist yet)."""
    return Path(os.path.realpath(path))


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file (hard links included) or one real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they point
        return real(a) == real(b)


def refuse_overlap(out: Path, protected: dict[str, Path], flag: str = "--out") -> None:
    """Refuse ``out`` when it is, lies inside, or contains any ``protected`` path
    (``{"run folder": path, ...}``): writing or replacing it could destroy that.
    ``flag`` names ``out`` in the message."""
    mine = real(out)
    for what, path in protected.items():
        theirs = real(path)
        if mine == theirs:
            relation = "is"
        elif mine.is_relative_to(theirs):
            relation = "is inside"
        elif theirs.is_relative_to(mine):
            relation = "contains"
        else:
            continue
        raise RefusedPath(f"{flag} {out} {relation} the {what} ({theirs}); writing there could overwrite it: "
                          "choose an --out outside it")


def check_replaceable_dir(out: Path, is_own: Callable[[Path], bool], force: bool, owner: str,
                          flag: str = "--out") -> None:
    """Refuse ``out`` unless it is absent, an empty folder, or (with ``force``) a folder
    ``is_own`` recognises as ``owner``'s earlier output."""
    if out.is_symlink():
        raise RefusedPath(f"{flag} {out} is a symbolic link (to {real(out)}); give the folder itself")
    if not out.exists():
        return
    if not out.is_dir():
        raise RefusedPath(f"{flag} {out} is a file, not a folder; it was left unchanged: choose another --out")
    if not any(out.iterdir()):
        return
    if not is_own(out):
        raise RefusedPath(f"{flag} {out} holds files {owner} did not write; it was left unchanged "
                          f"(--force replaces only {owner}'s own output): choose another --out or empty it yourself")
    if not force:
        raise RefusedPath(f"{flag} {out} exists and is not empty (an earlier {owner} output); "
                          "pass --force to replace it")


def check_output_file(out: str | Path, inputs: list[str | Path], force: bool, flag: str = "--out") -> None:
    """Refuse a file output that is one of the command's ``inputs``, is not a regular file, or
    (without ``force``) already exists: a data command's output is plain JSONL/PNG that nothing
    marks as its own, so an existing file is only replaced when the user says so."""
    out = Path(out)
    for src in inputs:
        if same_file(out, Path(src)):
            raise RefusedPath(f"{flag} {out} is the input file {src}; it was left unchanged: choose another {flag}")
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise RefusedPath(f"{flag} {out} is not a regular file; it was left unchanged: choose another {flag}")
    if out.exists() and not force:
        raise RefusedPath(f"{flag} {out} already exists; it was left unchanged: pass --force to replace it "
                          f"or choose another {flag}")


def replace_dir(new: Path, dst: Path) -> None:
    """Move the finished folder ``new`` to ``dst`` (same file system). An existing
    ``dst``, already checked to be the caller's own, is moved aside first and deleted
    only once ``new`` is in place."""
    if not dst.exists():
        os.replace(new, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
    os.replace(dst, old / dst.name)
    os.replace(new, dst)
    shutil.rmtree(old)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename).
    A symlink is followed, not replaced; an existing file keeps its permissions."""
    path = real(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
