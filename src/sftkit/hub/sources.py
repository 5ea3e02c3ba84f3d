"""Model hubs: Hugging Face (and its mirrors) and ModelScope, cache-first.

Project rule: nothing is downloaded implicitly. ``resolve_cached`` only ever
reads the local cache; ``download`` (``sft download REF``) is the one explicit
fetch, through the hub library's own machinery (progress bars, retries with
HTTP ranges, per-file resume: finished files are kept when a download stops).

References:
  * ``ORG/NAME`` or ``hf:ORG/NAME`` — the Hugging Face hub, or the mirror in
    ``HF_ENDPOINT``; cache under ``HF_HUB_CACHE`` / ``HF_HOME``;
  * ``modelscope:ORG/NAME`` — ModelScope through the ``modelscope`` package;
    cache under ``MODELSCOPE_CACHE``;
  * any of them with ``@REVISION`` (branch, tag or commit).

The environment is read at call time, not when huggingface_hub was imported,
so a variable set by the caller (or a test) is the one that counts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.core.errors import ModelNotFound, SourceUnavailable

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_PREFIX = "modelscope:"
HF_PREFIX = "hf:"
# Weights sftkit never loads (it loads safetensors only): not worth the bandwidth.
# The same patterns are used to download and to check a cached snapshot is complete.
IGNORE_PATTERNS = ["*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.gguf",
                   "*.tflite", "*.mlmodel", "onnx/*", "original/*", "coreml/*"]
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^\s@]+))?$")
_TRUE = {"1", "true", "yes", "on"}




@dataclass(frozen=True, slots=True)
class HubRef:
    """A parsed hub reference."""

    source: str  # "hf" or "modelscope"
    repo_id: str
    revision: str | None = None

    @property
    def hub(self) -> str:
        return "ModelScope" if self.source == "modelscope" else "the Hugging Face hub"

    def __str__(self) -> str:
        prefix = MODELSCOPE_PREFIX if self.source == "modelscope" else ""
        return f"{prefix}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def looks_like_hub_ref(ref: str) -> bool:
    """True for ``modelscope:...`` / ``hf:...`` and for a bare ``ORG/NAME[@rev]``."""
    if ref.startswith((MODELSCOPE_PREFIX, HF_PREFIX)):
        return True
    return bool(_REF.match(ref))


def parse_ref(ref: str, revision: str | None = None) -> HubRef:
    """``[modelscope:|hf:]ORG/NAME[@rev]`` -> HubRef; ``revision`` (``--revision``) may give the revision."""
    source, body = "hf", ref.strip()
    if body.startswith(MODELSCOPE_PREFIX):
        source, body = "modelscope", body[len(MODELSCOPE_PREFIX):]
    elif body.startswith(HF_PREFIX):
        body = body[len(HF_PREFIX):]
    m = _REF.match(body)
    if not m:
        raise ModelNotFound(f"{ref!r}: not a hub reference; expected ORG/NAME, ORG/NAME@REVISION or "
                            f"modelscope:ORG/NAME (e.g. Qwen/Qwen2-7B-Instruct)")
    rev = m["rev"]
    if revision and rev and revision != rev:
        raise ModelNotFound(f"{ref!r} names revision {rev!r} but --revision says {revision!r}; give one of them")
    return HubRef(source, m["repo"], revision or rev)


# -- environment (read at call time) -----------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def hf_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hf_cache_dir() -> Path:
    """``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``XDG_CACHE_HOME/huggingface/hub`` (huggingface_hub's order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def modelscope_cache_dir() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser()


def modelscope_installed() -> bool:
    return importlib.util.find_spec("modelscope") is not None


def _fix_hint(ref: HubRef) -> str:
    if ref.source == "modelscope":
        return (f"fetch it once with `sft download {ref}` (ModelScope cache: MODELSCOPE_CACHE, "
                f"now {modelscope_cache_dir()}), or pass a local model folder")
    return (f"fetch it once with `sft download {ref}` (a mirror: set HF_ENDPOINT; cache: HF_HOME, "
            f"now {hf_cache_dir()}), or pass a local model folder, or use modelscope:{ref.repo_id}")


# -- what a usable snapshot holds ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    ref: HubRef
    path: Path
    chat_template: bool  # the tokenizer ships a chat template

    def template_note(self) -> str:
        if self.chat_template:
            return "the tokenizer's chat template is included"
        return ("the tokenizer has no chat template (a base model?): set `template:` in the config to a shipped "
                "template, e.g. qwen2_chatml (`sft template list`)")


def has_chat_template(folder: Path) -> bool:
    """transformers reads ``chat_template.jinja``, ``chat_template.json`` or tokenizer_config's ``chat_template``."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    cfg = folder / "tokenizer_config.json"
    try:
        return bool(cfg.is_file() and json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def check_snapshot(ref: HubRef, folder: Path) -> Snapshot:
    """The folder is a loadable model: config, every safetensors shard, a tokenizer."""
    where = f"{ref} ({folder})"
    if not (folder / "config.json").is_file():
        raise SourceUnavailable(f"{where}: no config.json, so not a transformers model folder; "
                                f"run `sft download {ref}` again if the download was cut short")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise SourceUnavailable(f"{where}: {len(missing)} weight shard(s) missing ({', '.join(missing[:3])}); "
                                    f"run `sft download {ref}` again to finish the download")
    elif not any(folder.glob("*.safetensors")):
        raise SourceUnavailable(f"{where}: no .safetensors weights; sftkit loads safetensors only, so if the "
                                f"repository ships only .bin weights convert them (save_pretrained in a local "
                                f"folder), else run `sft download {ref}` again to finish an interrupted download")
    tok_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if not any((folder / f).is_file() for f in tok_files):
        raise SourceUnavailable(f"{where}: no tokenizer files (tokenizer.json / tokenizer.model / vocab.json)")
    return Snapshot(ref, folder, has_chat_template(folder))


# -- cache-only resolution -------------------------------------------------------------------


def resolve_cached(ref: HubRef) -> Snapshot:
    """The cached snapshot of ``ref``; never touches the network."""
    folder = _modelscope_cached(ref) if ref.source == "modelscope" else _hf_cached(ref)
    return check_snapshot(ref, folder)


def _hf_cached(ref: HubRef) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    rev = ref.revision or "main"
    try:
        return Path(snapshot_download(ref.repo_id, revision=rev, cache_dir=hf_cache_dir(), local_files_only=True,
                                      ignore_patterns=IGNORE_PATTERNS))
    except IncompleteSnapshotError as e:
        raise SourceUnavailable(f"the download of {ref} from {ref.hub} is incomplete (it was interrupted); "
                                f"run `sft download {ref}` again to finish it (finished files are kept)") from e
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise SourceUnavailable(f"model {ref} (revision {rev}) from {ref.hub} is not available offline (not in "
                                f"the local cache) and sftkit never downloads implicitly: {_fix_hint(ref)}") from e


def _modelscope_missing(ref: HubRef) -> SourceUnavailable:
    return SourceUnavailable(f"{ref} needs the modelscope package to read ModelScope's cache and download: "
                             f"`pip install modelscope`, or pass a local model folder")


def _modelscope_cached(ref: HubRef) -> Path:
    if not modelscope_installed():
        raise _modelscope_missing(ref)
    from modelscope import snapshot_download

    try:
        path = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(modelscope_cache_dir()),
                                 local_files_only=True)
    except Exception as e:  # modelscope raises its own CacheNotFound / HubError family
        raise SourceUnavailable(f"model {ref} from {ref.hub} is not available offline (not in the local cache) "
                                f"and sftkit never downloads implicitly: {_fix_hint(ref)}") from e
    return Path(path)


# -- the explicit download ---------------------------------------------------------------------


def download(ref: HubRef) -> Snapshot:
    """Fetch ``ref`` into its hub's cache (progress on stderr; a second call resumes)."""
    folder = _modelscope_download(ref) if ref.source == "modelscope" else _hf_download(ref)
    return check_snapshot(ref, folder)


def _hf_download(ref: HubRef) -> Path:
    if hf_offline():
        raise SourceUnavailable(f"cannot download {ref}: HF_HUB_OFFLINE=1 is set; unset it (or set it to 0) "
                                f"to download, or pass a local model folder")
    from huggingface_hub import snapshot_download

    endpoint = hf_endpoint()
    try:
        return Path(snapshot_download(ref.repo_id, revision=ref.revision or "main", cache_dir=hf_cache_dir(),
                                      endpoint=endpoint, ignore_patterns=IGNORE_PATTERNS, max_workers=4))
    except Exception as e:  # every hub / network error becomes one sentence below
        raise SourceUnavailable(_hf_error(ref, endpoint, e)) from e


def _hf_error(ref: HubRef, endpoint: str, e: BaseException) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return (f"{ref} at {endpoint} is gated: accept its terms on the hub page, then set HF_TOKEN "
                f"(or `hf auth login`) and run `sft download {ref}` again")
    if isinstance(e, RevisionNotFoundError):
        return f"{ref}: {endpoint} has no revision {ref.revision!r} of {ref.repo_id}; check the branch, tag or commit"
    if isinstance(e, RepositoryNotFoundError):
        return (f"{endpoint} has no model {ref.repo_id!r} (check the spelling; a private model needs HF_TOKEN); "
                f"on ModelScope try modelscope:{ref.repo_id}")
    if isinstance(e, LocalEntryNotFoundError) or _is_connection_error(e):
        return (f"cannot reach {endpoint} to download {ref} ({_short(e)}); check the network, set HF_ENDPOINT to "
                f"a reachable mirror, use modelscope:{ref.repo_id}, or pass a local model folder")
    return (f"the download of {ref} from {endpoint} stopped ({_short(e)}); run `sft download {ref}` again "
            f"to resume (finished files are kept)")


def _is_connection_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"ConnectError", "ConnectionError", "TimeoutException", "ProxyError"})


def _short(e: BaseException) -> str:
    """The first line of an exception message, bounded: one sentence, not a wall of library text."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {text[:200]}"


def _modelscope_download(ref: HubRef) -> Path:
    if not modelscope_installed():
        raise _modelscope_missing(ref)
    from modelscope import snapshot_download

    try:
        path = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(modelscope_cache_dir()),
                                 ignore_patterns=IGNORE_PATTERNS)
    except Exception as e:  # modelscope / requests errors become one sentence
        raise SourceUnavailable(_modelscope_error(ref, e)) from e
    return Path(path)


def _chain_names(e: BaseException) -> set[str]:
    """Class names of an exception and of its causes (modelscope re-raises its errors as requests errors)."""
    names: set[str] = set()
    cur: BaseException | None = e
    while cur is not None and len(names) < 50:
        names |= {c.__name__ for c in type(cur).__mro__}
        cur = cur.__cause__ or cur.__context__
    return names


def _modelscope_error(ref: HubRef, e: BaseException) -> str:
    names = _chain_names(e)
    if "NotExistError" in names:
        return f"ModelScope has no model {ref.repo_id!r}{_rev_note(ref)}; check the name (it is case-sensitive)"
    if names & {"ConnectionError", "ConnectError", "Timeout", "TimeoutException", "NetworkError"}:
        return (f"cannot reach ModelScope to download {ref} ({_short(e)}); check the network or "
                f"MODELSCOPE_ENDPOINT, try the Hugging Face id {ref.repo_id}, or pass a local model folder")
    return f"the download of {ref} from ModelScope stopped ({_short(e)}); run `sft download {ref}` again to resume"


def _rev_note(ref: HubRef) -> str:
    return f" at revision {ref.revision!r}" if ref.revision else ""


def describe(snapshot: Snapshot) -> dict[str, Any]:
    """The ``--json`` summary of a snapshot."""
    size = sum(f.stat().st_size for f in snapshot.path.rglob("*") if f.is_file())
    return {"ref": str(snapshot.ref), "source": snapshot.ref.source, "repo_id": snapshot.ref.repo_id,
            "revision": snapshot.ref.revision, "path": str(snapshot.path), "bytes": size,
            "chat_template": snapshot.chat_template}
