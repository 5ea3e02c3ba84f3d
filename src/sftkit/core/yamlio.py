"""The one YAML loader: every YAML a user can write or edit goes through ``load_yaml``.

Safe tags only, aliases within a budget (a YAML bomb is refused before anything walks it),
nesting within a depth, and every problem a ``ConfigError`` with its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError

from sftkit.core.errors import ConfigError
from sftkit.core.textfile import read_text

# ---------------------------------------------------------------- the one YAML loader
# Every YAML a user can write or edit (config files, overrides, the console's editor, a run folder's
# config.yaml) is read here. A YAML alias is a reference: ``b: [*a, *a]`` costs two nodes to parse but
# expands to two copies of ``a`` for anything that walks the result (validation, key lines, a report),
# so eight levels of ten aliases each (a 500-byte file) expand to 10^8 values. Aliases may add at most
# ALIAS_BUDGET values beyond what is written, counted on the composed graph before anything walks it.

ALIAS_BUDGET = 10_000
"""Values YAML aliases may add to a document beyond those written out (a config needs a handful)."""
MAX_DEPTH = 100
"""Deepest nesting accepted (a config is 3 or 4 levels; the YAML composer recurses per level)."""


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that records where each alias is used, bounds the nesting depth, and gives a
    value the constructor refuses (a date like 2023-13-45, an integer of 5,000 digits) its line."""

    def __init__(self, text: str, where: str) -> None:
        super().__init__(text)
        self.where = where
        self.aliases: list[tuple[str, yaml.Mark, int]] = []  # (anchor, where used, id of the target node)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            self.aliases.append((event.anchor, event.start_mark, id(node)))
            return node
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as e:
            raise ConfigError(f"{self.where}{_line(node.start_mark)}: cannot read {node.value!r:.40}: {e} "
                              "(quote the value to keep it as text)") from None


def _line(mark: yaml.Mark | None) -> str:
    return f":{mark.line + 1}" if mark is not None else ""


def _expanded_size(root: yaml.Node, loader: _Loader, where: str) -> tuple[int, int]:
    """(values after expanding every alias, distinct values), memoised per node: linear in the
    document, however large the expansion. A recursive alias (a value containing itself) is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            anchor, mark, _ = next((a for a in loader.aliases if a[2] == key), ("?", None, key))
            raise ConfigError(f"{where}{_line(mark)}: the YAML alias *{anchor} is used inside the value it names "
                              "(a recursive alias, an endless value); write the value out instead")
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        sizes[key] = 1 + sum(size(c) for c in children)
        open_nodes.discard(key)
        return sizes[key]

    return size(root), len(sizes)


def _check_aliases(root: yaml.Node, loader: _Loader, where: str) -> None:
    if not loader.aliases:
        return
    total, written = _expanded_size(root, loader, where)
    if total - written > ALIAS_BUDGET:
        anchor, mark, _ = loader.aliases[0]
        raise ConfigError(
            f"{where}{_line(mark)}: YAML aliases (*{anchor} here and {len(loader.aliases) - 1} more) expand this "
            f"document from {written:,} to {total:,} values, over the {ALIAS_BUDGET:,} extra values aliases may "
            "add; refused before reading further. Write the repeated values out, or use fewer aliases")


def _compose(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """The composed node graph (for key lines) and the constructed value, from one parse."""
    loader = _Loader(text, where)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_aliases(node, loader, where)
        return node, loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        what = "; ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}{_line(e.problem_mark or e.context_mark)}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML a user wrote (``where`` names it in errors): safe tags only, aliases within
    ``ALIAS_BUDGET``, nesting within ``MAX_DEPTH``. Every problem is a ``ConfigError`` with its line."""
    return _compose(text, where)[1]


def read_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """``load_yaml`` on a file (a run folder's config.yaml, a launch.yaml), read as strict UTF-8."""
    return load_yaml(read_text(path, what, ConfigError), str(path))
