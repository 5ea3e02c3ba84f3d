"""The layout holds: packages on floors, no import loops, nothing imports the CLI, the schema
imports nothing above it, and sftkit's own modules are imported at the top of a module except in
the CLI (see docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sftkit"

# Each package's floor: a module may import its own package and any lower floor, never a higher one.
FLOORS = {
    "core": 0,
    "hub": 1, "templates": 1,
    "data": 2,
    "infer": 3, "estimate": 3,
    "evaluate": 4,
    "train": 5, "export": 5,
    "pipeline": 6,
    "console": 7,
    "cli": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        if "examples" in f.relative_to(SRC).parts:
            continue  # the worked examples' data scripts, not modules
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported sftkit module, at module top) for every run-time import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    typing_only = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                   for n in ast.walk(node)}  # never imported at run time
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sftkit"):
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("sftkit")]
        else:
            continue
        for n in names:
            r = _resolve(n)
            if r:
                found.append((r, id(node) in top))
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def test_every_module_is_in_a_package_on_a_floor():
    loose = sorted(m for m in MODULES if m != "sftkit" and _package(m) not in FLOORS)
    assert not loose, f"modules outside the stage packages: {loose}; put each in a package of FLOORS"


def test_no_module_imports_a_higher_floor():
    bad = []
    for m, imps in GRAPH.items():
        if m == "sftkit":
            continue
        for dep, _ in imps:
            if dep != "sftkit" and FLOORS[_package(dep)] > FLOORS[_package(m)]:
                bad.append(f"{m} -> {dep}")
    assert not bad, "imports that go up a floor:\n" + "\n".join(sorted(bad))


def test_no_import_loops():
    edges = defaultdict(set)
    for m, imps in GRAPH.items():
        for dep, _ in imps:
            if dep != m and not m.startswith(dep + ".") and dep != "sftkit":
                edges[m].add(dep)
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append([*stack[stack.index(n):], n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for d in sorted(edges[n]):
            visit(d)
        stack.pop()

    for n in sorted(edges):
        visit(n)
    assert not cycles, "import loops:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_schema_imports_only_core():
    deps = {d for d, _ in GRAPH["sftkit.core.config"]}
    assert all(_package(d) == "core" for d in deps), deps


HEAVY_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "deepspeed", "bitsandbytes",
                  "fastapi", "uvicorn", "starlette")


def _heavy_modules() -> set[str]:
    """sftkit modules that import a heavy third-party package at their top, directly or through
    another sftkit module: importing one of them costs seconds."""
    heavy = set()
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] in HEAVY_PACKAGES for n in names):
                heavy.add(m)
    grew = True
    while grew:
        grew = False
        for m, imps in GRAPH.items():
            if m not in heavy and any(top and d in heavy for d, top in imps):
                heavy.add(m)
                grew = True
    return heavy


def test_own_modules_are_imported_at_the_top_unless_heavy():
    """Lazy imports are for heavy packages only (torch, transformers, ...), so that `sft --help` and
    light commands stay instant: a function-level import of an sftkit module is allowed only when
    that module is heavy and the importing one is not."""
    heavy = _heavy_modules()
    lazy = sorted(f"{m} -> {d}" for m, imps in GRAPH.items() for d, top in imps
                  if not top and (d not in heavy or m in heavy))
    assert not lazy, "function-level imports of light sftkit modules:\n" + "\n".join(lazy)


def test_help_imports_no_heavy_package():
    code = ("import sys; from sftkit.cli import app; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`sft --help` imports {out.stdout.strip()}"


def test_the_architecture_picture_is_current():
    sys.path.insert(0, str(SRC.parents[1] / "docs"))
    try:
        import architecture_svg
    finally:
        sys.path.pop(0)
    assert architecture_svg.OUT.read_text(encoding="utf-8") == architecture_svg.svg(), (
        "docs/architecture.svg is stale: python docs/architecture_svg.py")
