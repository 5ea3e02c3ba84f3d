"""Draw docs/architecture.svg from the code's own imports: one box per stage package, on its floor
(ground floor at the bottom), one arrow per package-to-package dependency.

Run ``python docs/architecture_svg.py``; a test keeps the file current.
"""

from __future__ import annotations

import ast
import html
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "sftkit"
OUT = ROOT / "docs" / "architecture.svg"

# The floors, bottom to top, and what each package is for (the box's second line).
FLOORS: list[list[tuple[str, str]]] = [
    [("core", "schema, errors, RunDir")],
    [("hub", "models, sources, device"), ("templates", "render, masks, check")],
    [("data", "read, check, prepare")],
    [("infer", "engine, server, chat"), ("estimate", "memory, time")],
    [("evaluate", "scores, report")],
    [("train", "recipe, methods"), ("export", "merge, GGUF")],
    [("pipeline", "sft run / demo")],
    [("console", "web page")],
    [("cli", "sft COMMAND")],
]
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 170, 46, 60, 34, 20


def package_edges() -> Counter[tuple[str, str]]:
    """(from package, to package) -> number of module-level imports between them."""
    edges: Counter[tuple[str, str]] = Counter()
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC).parts
        if "examples" in rel:
            continue
        src_pkg = rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sftkit."):
                dst_pkg = node.module.split(".")[1]
                if dst_pkg != src_pkg:
                    edges[(src_pkg, dst_pkg)] += 1
    return edges


def layout() -> dict[str, tuple[float, float]]:
    width = max(len(f) for f in FLOORS) * (BOX_W + GAP_X)
    pos = {}
    for level, floor in enumerate(FLOORS):
        y = MARGIN + (len(FLOORS) - 1 - level) * (BOX_H + GAP_Y)
        row_w = len(floor) * BOX_W + (len(floor) - 1) * GAP_X
        for i, (name, _) in enumerate(floor):
            pos[name] = (MARGIN + (width - row_w) / 2 + i * (BOX_W + GAP_X), y)
    return pos


def svg() -> str:
    pos = layout()
    width = int(max(x for x, _ in pos.values()) + BOX_W + MARGIN + 60)
    height = int(max(y for _, y in pos.values()) + BOX_H + MARGIN)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           '<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#64748b"/></marker></defs>']
    for a, b in sorted(package_edges()):
        if a not in pos or b not in pos:
            continue
        (x1, y1), (x2, y2) = pos[a], pos[b]
        sx, sy, ex, ey = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2, y2
        if y2 < y1:  # an import going up a floor would be drawn red (the tests forbid it)
            sy, ey = y1, y2 + BOX_H
        colour = "#dc2626" if y2 < y1 else "#94a3b8"
        out.append(f'<line x1="{sx:.0f}" y1="{sy:.0f}" x2="{ex:.0f}" y2="{ey:.0f}" stroke="{colour}" '
                   f'stroke-width="1.3" marker-end="url(#a)"><title>{a} -&gt; {b}</title></line>')
    for floor in FLOORS:
        for name, what in floor:
            x, y = pos[name]
            out.append(f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="#eff6ff" '
                       f'stroke="#2563eb"/>')
            out.append(f'<text x="{x + BOX_W / 2:.0f}" y="{y + 19:.0f}" text-anchor="middle" font-weight="bold">'
                       f'{html.escape(name)}/</text>')
            out.append(f'<text x="{x + BOX_W / 2:.0f}" y="{y + 36:.0f}" text-anchor="middle" fill="#475569">'
                       f'{html.escape(what)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.write_text(svg(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
