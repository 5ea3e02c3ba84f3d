"""Where the console works: the runs folder, and the folder relative paths are read from.

Every name or path that arrives from the page passes through here: run names must be one
plain folder name inside the runs folder (no separators, no ``..``, no symlink out of it),
and files picked in the page are resolved and must exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sftkit.console.errors import bad_request, not_found

# A letter or digit first (no hidden folders, no "-x" that looks like an option), then
# letters, digits, "_", "-", "." (Unicode letters included: 中文 run names are fine).
_NAME = re.compile(r"^[^\W_][\w.\-]{0,79}$")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class Workspace:
    base: Path  # relative paths typed in the page are relative to this folder
    runs: Path  # every run folder the console lists or creates lives directly under it

    @classmethod
    def create(cls, runs: str | Path = "runs", base: str | Path | None = None) -> Workspace:
        base_dir = Path(base or Path.cwd()).expanduser().resolve()
        runs_dir = Path(runs).expanduser()
        runs_dir = (runs_dir if runs_dir.is_absolute() else base_dir / runs_dir).resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
        return cls(base_dir, runs_dir)

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
        if not isinstance(raw, str) or not raw.strip():
            raise bad_request(f"{param}: empty path", param)
        p = Path(raw.strip()).expanduser()
        return (p if p.is_absolute() else self.base / p).resolve()

    def existing_file(self, raw: str, param: str) -> Path:
        path = self.resolve(raw, param)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise bad_request(f"{param}: {raw!r} {what} (resolved to {path})", param)
        return path

    def existing_dir(self, raw: str, param: str) -> Path:
        path = self.resolve(raw, param)
        if not path.is_dir():
            raise bad_request(f"{param}: {raw!r} is not a folder (resolved to {path})", param)
        return path

    def model_ref(self, raw: str, param: str = "model") -> str:
        """A model reference as sftkit takes it: the bundled alias, an existing local path
        (returned absolute), or an ``org/name`` hub id (used only if already cached)."""
        from sftkit.models import BUNDLED_ALIAS

        if not isinstance(raw, str) or not raw.strip():
            raise bad_request(f"{param}: empty model reference", param)
        ref = raw.strip()
        if ref == BUNDLED_ALIAS:
            return ref
        path = self.resolve(ref, param)
        if path.exists():
            return str(path)
        if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
            return ref  # a hub id: models.resolve says clearly if it is not in the local cache
        raise bad_request(f"{param}: {ref!r} is not the bundled alias {BUNDLED_ALIAS!r}, an existing file or "
                          f"folder (resolved to {path}), or an org/name hub id", param)

    def listing(self, raw: str | None) -> dict[str, object]:
        """One folder for the file picker: sub-folders, data files, and which entries are models."""
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
        parent = str(folder.parent) if folder.parent != folder else None
        return {"dir": str(folder), "parent": parent, "entries": entries}


def is_run(path: Path) -> bool:
    """A run folder: written by ``sft train`` (config.yaml) or started by the console (launch.yaml)."""
    return (path / "config.yaml").is_file() or (path / "launch.yaml").is_file()


def _dir_kind(p: Path) -> str:
    if is_run(p) and ((p / "adapter").is_dir() or (p / "model").is_dir()):
        return "run"
    if (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
        return "model"
    return "dir"
