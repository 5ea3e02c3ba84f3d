"""Loading a run config: YAML file + command-line overrides -> a validated ``RunConfig``.

Every problem is a ``ConfigError`` naming ``file:line``, the dotted key, and a hint taken from the
field's own documentation ("did you mean" for a misspelt key). Paths written in a config file are
relative to that file; paths given as command-line overrides are relative to the current folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from sftkit.core.config import ConfigConflict, RunConfig, _as_sources
from sftkit.core.errors import ConfigError
from sftkit.core.textfile import read_text
from sftkit.core.vocab import is_dataset_ref
from sftkit.core.yamlio import _compose, load_yaml


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.max_steps=2", "output_dir=/tmp/r"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. train.max_steps=10")
        _set_dotted(out, key.strip(), load_yaml(raw, f"override {item!r}") if raw else "")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _key_lines(root: yaml.Node | None) -> dict[tuple[str, ...], int]:
    """Line number (1-based) of every mapping key in a composed YAML document, by key path.
    Each node is visited once: a value reached again through an alias keeps its first lines."""
    lines: dict[tuple[str, ...], int] = {}
    seen: set[int] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = (*path, str(k.value))
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, str(i)))

    if root is not None:
        walk(root, ())
    return lines


def _from_override(loc: tuple[Any, ...], over_keys: set[tuple[str, ...]]) -> str | None:
    parts = tuple(str(x) for x in loc)
    for n in range(len(parts), 0, -1):
        if parts[:n] in over_keys:
            return ".".join(parts[:n])
    return None


def _walk(loc: tuple[Any, ...]) -> tuple[Any, Any]:
    """``(section model, field)`` at a key path; list indices are skipped (data.train.0.path)."""
    model: Any = RunConfig
    field = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None, None
        args = get_args(field.annotation) or (field.annotation,)
        inner = [a for arg in args for a in (get_args(arg) or (arg,))]
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model, field


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys next to the last part of ``loc`` (for "did you mean")."""
    model, _ = _walk(loc[:-1])
    return list(model.model_fields) if model is not None else []


def _field_doc(loc: tuple[Any, ...]) -> str:
    """The field's description (the schema's own documentation) as the hint for a bad value."""
    _, field = _walk(loc)
    doc = " ".join((field.description or "").split()) if field is not None else ""
    return f"hint: {doc}" if doc else "hint: see `sft train --help` for every key"


def _describe_one(e: Any, where: str, lines: dict[tuple[str, ...], int], over_keys: set[tuple[str, ...]]) -> str:
    loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    conflict = (e.get("ctx") or {}).get("error")
    if isinstance(conflict, ConfigConflict):
        # the key the conflict names, relative to the section whose validator raised it
        loc = (*loc, *conflict.key.split("."))
    key = ".".join(str(x) for x in loc) or "(top level)"
    line = lines.get(tuple(str(x) for x in loc))
    over = _from_override(loc, over_keys)
    place = f"command-line override {over}=..." if over else f"{where}:{line}" if line else where
    if isinstance(conflict, ConfigConflict):
        return f"{place}: {key}: contradictory options: {conflict.message}; hint: {conflict.hint}"
    if e["type"] == "extra_forbidden":
        valid = _section_fields(loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else (
            f"valid keys here: {', '.join(valid)}" if valid else "remove it")
        return f"{place}: unknown key {key!r}; {hint}"
    msg = str(e["msg"]).removeprefix("Value error, ")
    return f"{place}: {key}: {msg} (got {e.get('input')!r}); {_field_doc(loc)}"


def _describe(err: ValidationError, where: str, lines: dict[tuple[str, ...], int],
              over_keys: set[tuple[str, ...]] | None = None) -> str:
    return "\n".join(_describe_one(e, where, lines, over_keys or set()) for e in err.errors())


def _dotted_keys(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for k, v in d.items():
        out.add((*prefix, k))
        if isinstance(v, dict):
            out |= _dotted_keys(v, (*prefix, k))
    return out


def check_data_files(cfg: RunConfig) -> None:
    """A data file that does not exist stops a run before anything else happens (not at load time:
    a config may be written before its data, and `sft train --help`-style checks should not need it)."""
    for split in ("train", "val", "test"):
        for i, src in enumerate(getattr(cfg.data, split)):
            if not is_dataset_ref(src.path) and not src.path.is_file():  # a hub dataset is checked when read
                raise ConfigError(f"config data.{split}[{i}]: {src.path} does not exist (paths in a config file are "
                                  "relative to the file; in a command-line override, to the current folder)")


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make data paths and the template file relative to the config file."""
    data = raw.get("data")
    if isinstance(data, dict):
        for split in ("train", "val", "test"):
            if split not in data:
                continue
            srcs = _as_sources(data[split])
            if isinstance(srcs, list):
                fixed = []
                for s in srcs:
                    rel = isinstance(s, dict) and isinstance(s.get("path"), str) and not is_dataset_ref(s["path"])
                    fixed.append({**s, "path": str(base / s["path"])} if rel else s)
                data[split] = fixed
    t = raw.get("template")
    if isinstance(t, str) and t.endswith((".json", ".jinja")):
        raw["template"] = str(base / t)
    for key in ("output_dir",):
        if isinstance(raw.get(key), str):
            raw[key] = str(base / raw[key])
    for section in ("model", "teacher"):
        m = raw.get(section)
        if isinstance(m, dict) and isinstance(m.get("name_or_path"), str):
            p = m["name_or_path"]
            if p.startswith(("./", "../")) or (base / p).exists():
                m["name_or_path"] = str((base / p).resolve())
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge overrides, validate. Every problem is a ``ConfigError`` with file:line."""
    path = Path(path)
    if path.is_dir() and (path / "config.yaml").is_file():
        path = path / "config.yaml"
    node, raw = _compose(read_text(path, "config", ConfigError), str(path))
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (model:, data:, train:, ...)")
    raw = _resolve_paths(raw, path.resolve().parent)
    over = parse_overrides(overrides or [])
    over = _resolve_paths(over, Path.cwd())
    merged = _merge(raw, over)
    lines = _key_lines(node)
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e, str(path), lines, _dotted_keys(over))) from None
    return cfg


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
