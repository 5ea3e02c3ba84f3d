"""Where the console works: the runs folder, and the folder relative paths are read from.

Every name or path that arrives from the page passes through here: run names must be one
plain folder name inside the runs folder (no separators, no ``..``, no symlink out of it),
and files picked in the page are resolved and must exist.

The console reads only its own folders (``roots``): the base folder (where ``sft console``
was started), the runs folder, and any folder given with ``sft console --allow DIR``. Every
path an API request names -- a folder to list, a data file, a template or DeepSpeed file, a
local model folder -- must resolve (symlinks followed) inside one of them, and no part of it
below that folder may be hidden (``.ssh``, ``.env``, ``.git``, ``.cache``): else 403, before
the path is read or even tested for existence. Whoever holds the console's API can train on
what it can read, so this is what keeps the rest of the disk out of a request's reach. Hub ids
(``org/name``, read from the local cache by ``sftkit.hub.models``) and the bundled alias are not
paths and are not confined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sftkit.console.errors import ConsoleError, bad_request, not_found
from sftkit.core.errors import UsageError
from sftkit.core.rundir import RunDir
from sftkit.core.vocab import BUNDLED_ALIAS
from sftkit.templates.registry import AUTO, shipped_names

# A letter or digit first (no hidden folders, no "-x" that looks like an option), then
# letters, digits, "_", "-", "." (Unicode letters included: 中文 run names are fine).
_NAME = re.compile(r"^[^\W_][\w.\-]{0,79}$")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class Workspace:
    base: Path  # relative paths typed in the page are relative to this folder
    runs: Path  # every run folder the console lists or creates lives directly under it
    allowed: tuple[Path, ...] = ()  # further folders the page may read (sft console --allow)

    @classmethod
    def create(cls, runs: str | Path = "runs", base: str | Path | None = None,
               allow: Iterable[str | Path] = ()) -> Workspace:
        """Raises ValueError when an ``allow`` folder does not exist (a typo would otherwise
        surface later as "outside the folders this console reads")."""
        base_dir = Path(base or Path.cwd()).expanduser().resolve()
        runs_dir = Path(runs).expanduser()
        runs_dir = (runs_dir if runs_dir.is_absolute() else base_dir / runs_dir).resolve()
        extra = []
        for raw in allow:
            p = Path(raw).expanduser()
            p = (p if p.is_absolute() else base_dir / p).resolve()
            if not p.is_dir():
                raise UsageError(f"--allow {raw}: not a folder (resolved to {p})")
            extra.append(p)
        runs_dir.mkdir(parents=True, exist_ok=True)
        return cls(base_dir, runs_dir, tuple(extra))

    @property
    def roots(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys((self.base, self.runs, *self.allowed)))

    # -- runs ---------------------------------------------------------------------------------

    def run_dir(self, name: str, param: str = "name") -> Path:
        """The folder for run ``name`` (it may not exist yet); refuses names that leave the runs folder."""
        if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
            raise bad_request(f"run name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter "
                              "or digit (at most 80 characters)", param)
        path = (self.runs / name).resolve()
        if path.parent != self.runs:
            raise bad_request(f"run name {name!r} resolves outside the runs folder {self.runs}", param)
        return path

    def existing_run(self, name: str, param: str = "name") -> Path:
        path = self.run_dir(name, param)
        if not path.is_dir():
            raise not_found(f"no run named {name!r} in {self.runs}", param)
        return path

    def run_names(self) -> list[str]:
        if not self.runs.is_dir():
            return []
        return sorted(p.name for p in self.runs.iterdir() if p.is_dir() and _NAME.match(p.name) and is_run(p))

    # -- files --------------------------------------------------------------------------------

    def resolve(self, raw: str, param: str) -> Path:
        """The absolute path ``raw`` names (relative to the base folder); not confined: use
        ``readable`` (or ``existing_*``) before anything reads it."""
        if not isinstance(raw, str) or not raw.strip():
            raise bad_request(f"{param}: empty path", param)
        p = Path(raw.strip()).expanduser()
        return (p if p.is_absolute() else self.base / p).resolve()

    def contains(self, path: Path) -> bool:
        """Whether the resolved ``path`` is in one of the roots with no hidden part below it."""
        for root in self.roots:
            if path.is_relative_to(root) and not any(p.startswith(".") for p in path.relative_to(root).parts):
                return True
        return False

    def readable(self, raw: str, param: str) -> Path:
        """``raw`` resolved, when the console may read it; else 403 (whether or not it exists)."""
        path = self.resolve(raw, param)
        if self.contains(path):
            return path
        roots = ", ".join(map(str, self.roots))
        if any(path.is_relative_to(r) for r in self.roots):
            why = "is hidden (a name starting with '.'); the console does not read hidden files or folders"
        else:
            why = (f"is outside the folders this console reads ({roots}); start `sft console` in a folder "
                   "that holds it, or add `--allow FOLDER`")
        raise ConsoleError(403, f"{param}: {raw!r} (resolved to {path}) {why}", param, "path_not_allowed")

    def existing_file(self, raw: str, param: str) -> Path:
        path = self.readable(raw, param)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise bad_request(f"{param}: {raw!r} {what} (resolved to {path})", param)
        return path

    def existing_dir(self, raw: str, param: str) -> Path:
        path = self.readable(raw, param)
        if not path.is_dir():
            raise bad_request(f"{param}: {raw!r} is not a folder (resolved to {path})", param)
        return path

    def model_ref(self, raw: str, param: str = "model") -> str:
        """A model reference as sftkit takes it: the bundled alias, an existing local path
        (returned absolute), or an ``org/name`` hub id (used only if already cached)."""

        if not isinstance(raw, str) or not raw.strip():
            raise bad_request(f"{param}: empty model reference", param)
        ref = raw.strip()
        if ref == BUNDLED_ALIAS:
            return ref
        path = self.resolve(ref, param)
        if ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not path.exists():
            return ref  # a hub id: models.resolve says clearly if it is not in the local cache
        path = self.readable(ref, param)
        if path.exists():
            return str(path)
        raise bad_request(f"{param}: {ref!r} is not the bundled alias {BUNDLED_ALIAS!r}, an existing file or "
                          f"folder (resolved to {path}), or an org/name hub id", param)

    def template_ref(self, raw: str | None, param: str = "template") -> str | None:
        """A chat template as sftkit takes it: None/auto, a shipped name, or a readable file (absolute)."""

        if raw is None or raw in (AUTO, *shipped_names()):
            return raw
        return str(self.existing_file(raw, param))

    def listing(self, raw: str | None) -> dict[str, object]:
        """One folder for the file picker: sub-folders, data files, and which entries are models.
        ``parent`` is None at the top of a root; ``roots`` lets the page jump between them."""
        folder = self.existing_dir(raw, "dir") if raw else self.base
        entries = []
        try:
            children = sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))
        except OSError as e:
            raise bad_request(f"dir: cannot list {folder} ({e.strerror})", "dir") from None
        for p in children:
            if p.name.startswith("."):
                continue
            if p.is_dir():
                entries.append({"name": p.name, "path": str(p), "kind": _dir_kind(p)})
            elif p.suffix.lower() in DATA_SUFFIXES or p.suffix == ".gguf" or p.suffix in (".yaml", ".yml"):
                entries.append({"name": p.name, "path": str(p), "kind": "file", "size": p.stat().st_size})
        parent = str(folder.parent) if folder.parent != folder and self.contains(folder.parent) else None
        return {"dir": str(folder), "parent": parent, "entries": entries, "roots": [str(r) for r in self.roots]}


def is_run(path: Path) -> bool:
    """A run folder: written by ``sft train`` or started by the console (launch.yaml)."""
    return RunDir(path).config.is_file() or (path / "launch.yaml").is_file()


def _dir_kind(p: Path) -> str:
    if is_run(p) and ((p / "adapter").is_dir() or (p / "model").is_dir()):
        return "run"
    if (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return "model"
    return "dir"
