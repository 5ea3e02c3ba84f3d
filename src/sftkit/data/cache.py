"""A cache of prepared data (read, validated, rendered, tokenized, masked), so that a resumed
run or a second run on the same data skips the preparation.

The key is a digest of everything the result depends on: the bytes of every data file, the
``data:`` config, the seed, the template (its source, and its rendering of a probe), the
tokenizer (its whole serialized form), the masking settings, and the source code of the modules
that read, render and tokenize. An edited data file, another template or tokenizer, or another
sftkit version therefore never reads a stale entry. Entries are pickles written atomically under
``<sftkit home>/prepared/`` (see ``sftkit.hub.models.sftkit_home``); only the newest ``KEEP`` stay.
They are read back by an unpickler that builds nothing but sftkit's own plain data classes
(``_ALLOWED``): an entry planted in that folder cannot run code, it is just prepared again.
``SFTKIT_PREPARED_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sftkit
from sftkit.core.conversation import Conversation, Message
from sftkit.data.load import source_hash
from sftkit.hub.models import sftkit_home
from sftkit.templates.render import paused_gc

KEEP = 3  # entries kept (the newest by use); each is about the size of the tokenized data
_FORMAT = 1  # bump when the pickled objects change shape
_PROBE = Conversation([Message("system", "s"), Message("user", "u 你好 😊"), Message("assistant", "a")])
_CODE = ("core/conversation.py", "data", "templates")  # what produces a prepared data set
# every global a prepared data set pickles to: plain data classes whose state is restored field by field
_ALLOWED = frozenset({
    ("sftkit.data.prepare", "Prepared"), ("sftkit.data.prepare", "SplitData"),
    ("sftkit.core.conversation", "Conversation"), ("sftkit.core.conversation", "Message"),
    ("sftkit.templates.render", "Rendered"), ("sftkit.data.types", "Reject"),
})


class _DataOnly(pickle.Unpickler):
    """Refuses every global but ``_ALLOWED``: no callable from outside sftkit's data classes
    (``os.system``, ``builtins.eval``, ...) can be reached, so loading cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"prepared-data cache entry refers to {module}.{name}: not data")
        return super().find_class(module, name)


def enabled() -> bool:
    return os.environ.get("SFTKIT_PREPARED_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:

    return sftkit_home() / "prepared"


def _sha(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two inputs hash alike by concatenation
    h.update(data)


def _code_digest() -> str:
    root = Path(sftkit.__file__).parent
    h = hashlib.sha256()
    for part in _CODE:
        p = root / part
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            _sha(h, str(f.relative_to(root)).encode())
            _sha(h, f.read_bytes())
    return h.hexdigest()


def _tokenizer_bytes(tok: Any) -> bytes | None:
    """The tokenizer's whole definition, or ``None`` when it cannot be serialized (no caching then)."""
    backend = getattr(tok, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        return backend.to_str().encode()
    if hasattr(tok, "get_vocab"):  # slow tokenizers
        return json.dumps([type(tok).__name__, sorted(tok.get_vocab().items())], ensure_ascii=False).encode()
    return None


def _template_bytes(template: Any) -> bytes:
    spec = getattr(template, "spec", None)
    parts = [type(template).__name__, getattr(template, "name", ""),
             str(getattr(getattr(template, "tokenizer", None), "chat_template", "")),
             spec.model_dump_json() if spec is not None else "",
             "".join(s.text for s in template.segments(_PROBE))]  # fmt: skip
    return json.dumps(parts, ensure_ascii=False).encode()


def key(data: Any, renderer: Any, seed: int) -> str | None:
    """The cache key of ``prepare(data, renderer, seed)`` (``None``: the tokenizer cannot be identified)."""
    tok_bytes = _tokenizer_bytes(renderer.tokenizer)
    if tok_bytes is None:
        return None
    h = hashlib.sha256()
    _sha(h, f"{_FORMAT} {sftkit.__version__} {_code_digest()} {seed}".encode())
    _sha(h, data.model_dump_json().encode())
    for src in [*data.train, *data.val]:
        _sha(h, source_hash(src.path).encode())  # a hub dataset: its cached files
    _sha(h, _template_bytes(renderer.template))
    _sha(h, tok_bytes)
    tok = renderer.tokenizer
    _sha(h, json.dumps([tok.eos_token, tok.bos_token, tok.pad_token, renderer.policy, renderer.cutoff_len,
                        renderer.overflow]).encode())  # fmt: skip
    return h.hexdigest()[:32]


def _store(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as f, paused_gc():
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)  # atomic: a concurrent reader (another rank) sees all of it or nothing
    entries = sorted(path.parent.glob("*.pkl"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)


def _load(path: Path) -> Any | None:
    try:
        with path.open("rb") as f, paused_gc():
            obj = _DataOnly(f).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
        return None  # unreadable, foreign or from an incompatible version: prepare again and overwrite it
    if (type(obj).__module__, type(obj).__qualname__) not in _ALLOWED:
        return None
    os.utime(path)  # most recently used: kept by the eviction
    return obj


def cached(data: Any, renderer: Any, seed: int, build: Callable[[], Any]) -> tuple[Any, dict[str, str]]:
    """``build()``, or its result stored by an earlier call with the same inputs.

    Returns the result and ``{"status": "hit" | "stored" | "off", "path": ...}``."""
    k = key(data, renderer, seed) if enabled() else None
    if k is None:
        return build(), {"status": "off"}
    path = cache_dir() / f"{k}.pkl"
    hit = _load(path) if path.exists() else None
    if hit is not None:
        return hit, {"status": "hit", "path": str(path)}
    out = build()
    try:
        _store(path, out)
    except OSError as e:  # a full or read-only disk costs the cache, never the run
        return out, {"status": "off", "reason": f"cannot write {path}: {e.strerror}"}
    return out, {"status": "stored", "path": str(path)}
