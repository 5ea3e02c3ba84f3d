"""Every config field with its type, default and documentation, read from the schema itself:
what ``sft train --help``, ``configs/finetune_reference.yaml`` and the console's form show."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from sftkit.core.config import DataSource, RunConfig, _Section


def _type_name(ann: Any) -> str:
    if get_origin(ann) is Literal:
        return "|".join(str(a) for a in get_args(ann))
    if isinstance(ann, type) and issubclass(ann, Enum):
        return "|".join(m.value for m in ann)
    if get_origin(ann) in (Union, UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(ann))
    if get_origin(ann) is list:
        return f"list of {_type_name(get_args(ann)[0])}"
    if get_origin(ann) is dict:
        return "mapping"
    return getattr(ann, "__name__", str(ann))


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted path, e.g. train.learning_rate
    type: str
    default: Any  # the Python default; _REQUIRED when the field must be given
    doc: str

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def default_text(self) -> str:
        if self.required:
            return "(required)"
        v = self.default.value if isinstance(self.default, Enum) else self.default
        return "null" if v is None else str(v)


_REQUIRED = object()


def field_docs(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[FieldDoc]:
    """Every field with its type, default and description; sections expanded."""
    rows: list[FieldDoc] = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, _Section):
            rows.extend(field_docs(ann, f"{prefix}{name}."))
            continue
        if get_origin(ann) is list and get_args(ann)[0] is DataSource:
            typ = "path, list of paths, or list of {path, format, columns, weight}"
        else:
            typ = _type_name(ann)
        default = _REQUIRED if f.is_required() else f.get_default(call_default_factory=True)
        rows.append(FieldDoc(f"{prefix}{name}", typ, default, (f.description or "").replace("\n", " ")))
    return rows
