"""The config form and the YAML it stands for, both built from ``sftkit.core.config``.

The form is generated from the schema (``field_docs()`` gives every key with its type,
default and help text; the pydantic annotations give the widget). A form value is text,
read like a ``key=value`` override on the command line (YAML scalars and flow lists), so
the form, the YAML editor and the CLI agree on what a value means.

The YAML a console run trains with is written to ``<run>/launch.yaml``: the keys that differ
from the defaults, with every path made absolute, ``output_dir`` set to the run folder.
``sft train <run>/launch.yaml`` on the command line is the same run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from sftkit.console.errors import bad_request
from sftkit.console.workspace import Workspace
from sftkit.core.config import DataSource, RunConfig
from sftkit.core.configio import load_config
from sftkit.core.errors import ConfigError
from sftkit.core.fielddocs import FieldDoc, field_docs
from sftkit.core.yamlio import load_yaml

# output_dir is the run folder, chosen by the console from the run name.
_HIDDEN = {"output_dir"}
_ORDER = ("name", "output_dir", "model", "template", "data", "method", "train", "eval")
_MAX_YAML = 200_000


# -- the schema of the form ------------------------------------------------------------------


def _annotation(key: str) -> Any:
    model: Any = RunConfig
    parts = key.split(".")
    for part in parts[:-1]:
        model = model.model_fields[part].annotation
    return model.model_fields[parts[-1]].annotation


def _kind(ann: Any) -> tuple[str, list[str] | None, bool]:
    """(widget kind, choices, nullable) for an annotation."""
    nullable = False
    if get_origin(ann) in (Union, UnionType):
        args = [a for a in get_args(ann) if a is not NoneType]
        nullable = len(args) < len(get_args(ann))
        if len(args) > 1:
            return "yaml", None, nullable  # e.g. list of names or "all-linear": typed as YAML
        ann = args[0]
    if get_origin(ann) is Literal:
        return "enum", [str(a) for a in get_args(ann)], nullable
    if isinstance(ann, type) and issubclass(ann, Enum):
        return "enum", [m.value for m in ann], nullable
    if get_origin(ann) is list:
        return ("sources" if get_args(ann)[0] is DataSource else "list"), None, nullable
    if get_origin(ann) is dict:
        return "yaml", None, nullable
    simple = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}
    return simple.get(ann, "yaml"), None, nullable


def _plain(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def to_text(kind: str, v: Any) -> str:
    """A value as the form shows it."""
    v = _plain(v)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if kind == "sources":
        return "\n".join(_source_text(s) for s in v)
    if isinstance(v, str):
        return v
    if isinstance(v, list | dict):
        return yaml.safe_dump(v, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return str(v)


def _source_text(s: Any) -> str:
    if isinstance(s, dict):
        extra = {k: x for k, x in s.items() if x not in (None, {}, [])}
        if set(extra) <= {"path"}:
            return str(s.get("path", ""))
        return yaml.safe_dump(extra, default_flow_style=True, allow_unicode=True, width=10_000,
                              sort_keys=False).strip()
    return str(s)


def _field(fd: FieldDoc) -> dict[str, Any]:
    kind, choices, nullable = _kind(_annotation(fd.key))
    default = None if fd.required else _plain(fd.default)
    return {
        "key": fd.key,
        "section": fd.key.split(".")[0] if "." in fd.key else "run",
        "type": fd.type,
        "kind": kind,
        "choices": choices,
        "nullable": nullable,
        "required": fd.required,
        "default": default,
        "default_text": None if fd.required else to_text(kind, default),
        "doc": fd.doc,
    }


def form_schema() -> dict[str, Any]:
    fields = [_field(fd) for fd in field_docs() if fd.key not in _HIDDEN]
    sections = list(dict.fromkeys(f["section"] for f in fields))
    return {"fields": fields, "sections": sections}


_FIELDS = {f["key"]: f for f in form_schema()["fields"]}


# -- form values <-> nested config dict ------------------------------------------------------------


def _parse_value(f: dict[str, Any], text: str, ws: Workspace) -> Any:
    kind = f["kind"]
    if kind in ("str", "path", "enum"):
        return text
    if kind == "bool":
        low = text.strip().lower()
        if low not in ("true", "false"):
            raise ValueError("expected true or false")
        return low == "true"
    if kind == "sources":
        out: list[Any] = []
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line:
                continue
            item = load_yaml(line, f["key"]) if line.startswith("{") else line
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                item = {**item, "path": str(ws.resolve(item["path"], f["key"]))}
            elif isinstance(item, str):
                item = str(ws.resolve(item, f["key"]))
            out.append(item)
        return out
    return load_yaml(text, f["key"])


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def values_to_raw(values: dict[str, str], ws: Workspace) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Form values -> the nested dict a YAML file would hold (values equal to the default are left out)."""
    raw: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    for key, text in values.items():
        f = _FIELDS.get(key)
        if f is None:
            errors.append({"key": key, "message": f"unknown config key {key!r}"})
            continue
        if not isinstance(text, str):
            errors.append({"key": key, "message": "expected the value as text"})
            continue
        if text.strip() == "" and not f["required"]:
            continue  # empty: the default (null for optional fields)
        if f["default_text"] is not None and text.strip() == f["default_text"].strip():
            continue
        try:
            value = _parse_value(f, text, ws)
        except (ValueError, yaml.YAMLError) as e:
            errors.append({"key": key, "message": f"cannot read {text!r}: {e}"})
            continue
        if key == "model.name_or_path" and value:
            with contextlib.suppress(Exception):
                value = ws.model_ref(value, key)
        _set(raw, key, value)
    return raw, errors


def raw_errors(raw: dict[str, Any]) -> list[dict[str, str]]:
    """Schema errors of a nested config dict, one per key (for the form)."""
    try:
        RunConfig.model_validate(raw)
    except ValidationError as e:
        out = []
        for err in e.errors():
            loc = [str(x) for x in err["loc"] if not str(x).startswith("function-")]
            key = ".".join(x for x in loc if not x.isdigit()) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            out.append({"key": key, "message": f"{'.'.join(loc)}: {msg}"})
        return out
    return []


def dump_yaml(raw: dict[str, Any]) -> str:
    ordered = {k: raw[k] for k in _ORDER if k in raw} | {k: v for k, v in raw.items() if k not in _ORDER}
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, width=120) if ordered else ""


def config_to_values(cfg: RunConfig) -> dict[str, str]:
    """Every form field's text for a validated config."""
    dumped = cfg.model_dump(mode="json")
    out: dict[str, str] = {}
    for key, f in _FIELDS.items():
        v: Any = dumped
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        out[key] = to_text(f["kind"], v)
    return out


# -- YAML text -> RunConfig ----------------------------------------------------------------------


def load_text(text: str, ws: Workspace) -> RunConfig:
    """Validate YAML typed in the page exactly as ``sft train`` reads a file: through
    ``load_config`` on a file in the console's base folder, so relative paths mean the same
    as in a config file saved there. Raises ``ConfigError`` (the message names YAML:line)."""
    if not isinstance(text, str) or not text.strip():
        raise bad_request("yaml: the config is empty; it needs at least data.train", "yaml")
    if len(text) > _MAX_YAML:
        raise bad_request(f"yaml: {len(text):,} characters; a config over {_MAX_YAML:,} is not plausible", "yaml")
    fd, tmp = tempfile.mkstemp(prefix=".sft-console-", suffix=".yaml", dir=ws.base)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            return load_config(tmp)
        except ConfigError as e:
            raise ConfigError(str(e).replace(tmp, "YAML")) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def run_yaml(cfg: RunConfig, run_dir: Path) -> str:
    """The YAML a console run trains with: non-default keys, absolute paths, output_dir = the run folder."""
    cfg = cfg.model_copy(update={"output_dir": run_dir})
    d = cfg.model_dump(mode="json", exclude_defaults=True)
    d["name"], d["output_dir"] = cfg.name, str(run_dir)
    d.setdefault("model", {})["name_or_path"] = cfg.model.name_or_path
    data = d.setdefault("data", {})
    for split in ("train", "val", "test"):
        if split in data:
            data[split] = [s["path"] if set(s) == {"path"} else s for s in data[split]]
    return dump_yaml(d)


def notes_for(raw_text: str, cfg: RunConfig, run_dir: Path) -> list[str]:
    """What the console changes in a config, said out loud (nothing silently lost)."""
    notes = []
    try:
        raw = load_yaml(raw_text, "YAML") or {}
    except ConfigError:
        raw = {}
    given = raw.get("output_dir") if isinstance(raw, dict) else None
    if given and Path(str(cfg.output_dir or "")).resolve() != run_dir:
        notes.append(f"output_dir {given!r} is replaced by the run folder {run_dir} (the console keeps every run "
                     "in its runs folder; the name picks the folder)")
    if not cfg.data.test:
        notes.append("no data.test file: the run will be trained and reported, but not evaluated before/after")
    return notes
