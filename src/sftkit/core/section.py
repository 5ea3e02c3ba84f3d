"""The base of every config section and the error a section raises for options that contradict
each other. Shared by ``config.py`` and ``stagecfg.py`` (the stage sections), which would
otherwise import each other."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigConflict(ValueError):
    """Options that contradict each other (raised inside validators): ``key`` is the
    dotted path reported to the user (relative to the section raising it), ``hint`` the fix."""

    def __init__(self, key: str, message: str, hint: str) -> None:
        super().__init__(f"{message}; {hint}")
        self.key, self.message, self.hint = key, message, hint


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    def _changed(self, key: str) -> bool:
        """Given in the file with a value other than the default (a full reference file stays valid)."""
        return key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default

    def changed_keys(self) -> list[str]:
        return [k for k in type(self).model_fields if self._changed(k)]
