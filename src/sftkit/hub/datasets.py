"""Hub datasets by id: ``hf:ORG/NAME[@REV][:SPLIT]`` and ``modelscope:ORG/NAME[@REV][:SPLIT]``.

The rule models follow (``hub/sources.py``) holds for datasets: nothing is downloaded
implicitly. ``sft download --dataset REF`` is the one fetch (the hub library's progress bars,
per-file resume: finished files are kept when a download stops); reading a dataset resolves it
from the local cache only, so training and evaluation work offline afterwards.

A dataset repository holds data files (JSONL, JSON, CSV, TSV, Parquet) whose paths name their
split the way the Hugging Face hub names them: a word of the path, between ``-``, ``_``, ``.``,
``/``, spaces or digits, is ``train``/``training``, ``validation``/``valid``/``val``/``dev`` or
``test``/``testing``/``eval``/``evaluation`` (``train.jsonl``, ``data/train-00000-of-00001.parquet``,
``dev/part1.csv``, ``news_test.jsonl``). ``:SPLIT`` picks one split (a name that is none of these
picks the files with that word in their path); ``:PATTERN`` (with ``/``, ``.`` or ``*``) picks files
by glob. Without either, a dataset with one split (or none) is read whole, and one with several is
refused with the list: training on a test split by accident is worse than one more word.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.core.digest import file_hash, json_digest
from sftkit.core.errors import DataError, SourceUnavailable
from sftkit.hub.sources import (
    _chain_names,
    _is_connection_error,
    _short,
    hf_cache_dir,
    hf_endpoint,
    hf_offline,
    modelscope_cache_dir,
    modelscope_installed,
)

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF = re.compile(rf"^(?P<src>hf|modelscope):(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^\s:@]+))?(?::(?P<sel>\S.*))?$")
SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
               "evaluation": "test"}
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
# JSON files a dataset repository holds beside its data (hub metadata, `save_to_disk` state, ModelScope's card)
_NOT_DATA = {"dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json", "configuration.json"}
_SEPARATORS = re.compile(r"[-._ 0-9/]+")
_GLOB_CHARS = set("/.*?[")
NO_SPLIT = "(no split)"


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """A parsed dataset id; ``selector`` is the ``:SPLIT`` or ``:PATTERN`` part."""

    source: str  # "hf" or "modelscope"
    repo_id: str
    revision: str | None = None
    selector: str | None = None

    @property
    def hub(self) -> str:
        return "ModelScope" if self.source == "modelscope" else "the Hugging Face hub"

    @property
    def repo(self) -> str:
        """The reference without its selector: what ``sft download --dataset`` fetches."""
        return f"{self.source}:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    def __str__(self) -> str:
        return self.repo + (f":{self.selector}" if self.selector else "")


def parse_dataset_ref(text: str) -> DatasetRef:
    m = _REF.match(str(text).strip())
    if not m:
        raise DataError(f"{text!r}: not a dataset id; expected hf:ORG/NAME[@REVISION][:SPLIT] or "
                        "modelscope:ORG/NAME[@REVISION][:SPLIT], e.g. hf:my-org/news:train")
    return DatasetRef(m["src"], m["repo"], m["rev"], m["sel"])


def _words(rel: str) -> list[str]:
    return [w.lower() for w in _SEPARATORS.split(rel.rsplit(".", 1)[0]) if w]


def split_of(rel: str) -> str | None:
    """The split a data file's path names (the file name's word wins over its folder's), or None."""
    found = [SPLIT_WORDS[w] for w in _words(rel) if w in SPLIT_WORDS]
    return found[-1] if found else None


def _data_files(folder: Path) -> tuple[str, ...]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if (p.suffix.lower() in DATA_SUFFIXES and p.name not in _NOT_DATA
                and not any(part.startswith(".") for part in rel.split("/")) and p.is_file()):
            out.append(rel)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DatasetSnapshot:
    """A dataset in the local cache: its folder and its data files (relative paths)."""

    ref: DatasetRef
    path: Path
    files: tuple[str, ...]

    def splits(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in self.files:
            out.setdefault(split_of(f) or NO_SPLIT, []).append(f)
        return out

    def example_split(self) -> str:
        named = sorted(s for s in self.splits() if s != NO_SPLIT)
        return "train" if "train" in named else (named or ["train"])[0]

    def _listing(self) -> str:
        return "; ".join(f"{name}: {', '.join(fs[:3])}{' ...' if len(fs) > 3 else ''}"
                         for name, fs in sorted(self.splits().items()))

    def select(self) -> list[str]:
        """The data files the reference's selector names (relative paths), or a ``DataError`` saying what exists."""
        if not self.files:
            raise DataError(f"{self.ref.repo} ({self.path}) holds no data files ({', '.join(DATA_SUFFIXES)}); "
                            "sftkit reads data files, not dataset loading scripts: convert it to JSONL or Parquet "
                            "with the `datasets` library and point data.train at the file")
        sel = self.ref.selector
        if sel is None:
            splits = self.splits()
            if len(splits) > 1:
                raise DataError(f"{self.ref} has several splits ({self._listing()}); name one, e.g. "
                                f"{self.ref.repo}:{self.example_split()}")
            return list(self.files)
        if _GLOB_CHARS & set(sel):
            chosen = [f for f in self.files if fnmatch.fnmatchcase(f, sel)]
        elif sel.lower() in SPLIT_WORDS:
            chosen = [f for f in self.files if split_of(f) == SPLIT_WORDS[sel.lower()]]
        else:  # a split of the dataset's own naming (e.g. train_zh): the word in the path
            chosen = [f for f in self.files if sel.lower() in _words(f)]
        if not chosen:
            raise DataError(f"{self.ref}: no data file of the dataset matches {sel!r}; it has {self._listing()}")
        return chosen

    def digest(self) -> str:
        """Identity of the selected files' contents (cache keys and resume fingerprints)."""
        return json_digest([[f, file_hash(self.path / f)] for f in self.select()])


# -- cache-only resolution -------------------------------------------------------------------------


def _not_cached(ref: DatasetRef, why: str = "is not in the local cache") -> SourceUnavailable:
    cache = (f"ModelScope cache: MODELSCOPE_CACHE, now {modelscope_cache_dir()}" if ref.source == "modelscope"
             else f"cache: HF_HOME, now {hf_cache_dir()}; a mirror: HF_ENDPOINT")
    return SourceUnavailable(f"dataset {ref.repo} from {ref.hub} {why}, and sftkit never downloads implicitly: "
                             f"fetch it once with `sft download --dataset {ref.repo}` ({cache}), or point the "
                             "config at a local file")


def resolve_dataset(ref: DatasetRef) -> DatasetSnapshot:
    """The cached dataset; never touches the network."""
    folder = _ms_fetch(ref, offline=True) if ref.source == "modelscope" else _hf_cached(ref)
    return DatasetSnapshot(ref, folder, _data_files(folder))


def _hf_cached(ref: DatasetRef) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref.repo_id, repo_type="dataset", revision=ref.revision or "main",
                                      cache_dir=hf_cache_dir(), local_files_only=True))
    except IncompleteSnapshotError as e:
        raise _not_cached(ref, "was only partly downloaded (interrupted; finished files are kept)") from e
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise _not_cached(ref) from e


def _ms_fetch(ref: DatasetRef, offline: bool) -> Path:
    if not modelscope_installed():
        raise SourceUnavailable(f"{ref.repo} needs the modelscope package to read ModelScope's cache and "
                                "download: `pip install modelscope`, or point the config at a local file")
    from modelscope import snapshot_download

    try:
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(modelscope_cache_dir()),
                                      local_files_only=offline, repo_type="dataset"))
    except Exception as e:  # modelscope raises its own CacheNotFound / HubError family, or requests' errors
        if offline:
            raise _not_cached(ref) from e
        raise SourceUnavailable(_ms_error(ref, e)) from e


# -- the explicit download ---------------------------------------------------------------------------


def download_dataset(ref: DatasetRef) -> DatasetSnapshot:
    """Fetch the whole dataset repository into its hub's cache (progress on stderr; a second call resumes)."""
    folder = _ms_fetch(ref, offline=False) if ref.source == "modelscope" else _hf_download(ref)
    return DatasetSnapshot(ref, folder, _data_files(folder))


def _hf_download(ref: DatasetRef) -> Path:
    if hf_offline():
        raise SourceUnavailable(f"cannot download {ref.repo}: HF_HUB_OFFLINE=1 is set; unset it (or set it to 0) "
                                "to download, or point the config at a local file")
    from huggingface_hub import snapshot_download

    endpoint = hf_endpoint()
    try:
        return Path(snapshot_download(ref.repo_id, repo_type="dataset", revision=ref.revision or "main",
                                      cache_dir=hf_cache_dir(), endpoint=endpoint, max_workers=4))
    except Exception as e:  # every hub / network error becomes one sentence below
        raise SourceUnavailable(_hf_error(ref, endpoint, e)) from e


def _hf_error(ref: DatasetRef, endpoint: str, e: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    again = f"`sft download --dataset {ref.repo}`"
    if isinstance(e, GatedRepoError):
        return (f"dataset {ref.repo_id} at {endpoint} is gated: accept its terms on the hub page, then set "
                f"HF_TOKEN (or `hf auth login`) and run {again} again")
    if isinstance(e, RevisionNotFoundError):
        return f"{endpoint} has no revision {ref.revision!r} of dataset {ref.repo_id}; check the branch, tag or commit"
    if isinstance(e, RepositoryNotFoundError):
        return (f"{endpoint} has no dataset {ref.repo_id!r} (check the spelling; a private one needs HF_TOKEN); "
                f"on ModelScope try modelscope:{ref.repo_id}")
    if _is_connection_error(e) or "LocalEntryNotFoundError" in _chain_names(e):
        return (f"cannot reach {endpoint} to download dataset {ref.repo_id} ({_short(e)}); check the network, "
                f"set HF_ENDPOINT to a reachable mirror, or use modelscope:{ref.repo_id}")
    return f"the download of {ref.repo} from {endpoint} stopped ({_short(e)}); run {again} again to resume"


def _ms_error(ref: DatasetRef, e: BaseException) -> str:
    names = _chain_names(e)
    if "NotExistError" in names or "RepoNotFound" in names:
        return f"ModelScope has no dataset {ref.repo_id!r}; check the name (it is case-sensitive)"
    if names & {"ConnectionError", "ConnectError", "Timeout", "TimeoutException", "NetworkError"}:
        return (f"cannot reach ModelScope to download dataset {ref.repo_id} ({_short(e)}); check the network or "
                f"MODELSCOPE_ENDPOINT, or try hf:{ref.repo_id}")
    return (f"the download of {ref.repo} from ModelScope stopped ({_short(e)}); run "
            f"`sft download --dataset {ref.repo}` again to resume")


def describe_dataset(snap: DatasetSnapshot) -> dict[str, Any]:
    """The ``--json`` summary of a downloaded dataset."""
    size = sum(f.stat().st_size for f in snap.path.rglob("*") if f.is_file())
    return {"ref": snap.ref.repo, "source": snap.ref.source, "repo_id": snap.ref.repo_id,
            "revision": snap.ref.revision, "path": str(snap.path), "bytes": size, "splits": snap.splits()}
