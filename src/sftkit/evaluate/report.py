"""``sft report RUN``: one self-contained report.html for a run folder.

Everything is inline — CSS in a <style> block, charts as hand-written SVG — so
the file can be mailed, attached to a ticket or opened offline, and nothing runs
in the reader's browser (no scripts at all).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sftkit.core.results import headline_metric
from sftkit.core.rundir import RunDir

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
# Metrics on a 0-1 scale are shown as percentages so they share an axis with BLEU/ROUGE (0-100).
_UNIT_SCALE = ("accuracy", "macro_f1", "exact_match", "json_valid", "json_field_match", "json_exact",
               "key_facts_recall", "key_facts_accuracy", "key_facts_precision")
_QUALITY = (*_UNIT_SCALE, "bleu", "rouge1", "rouge2", "rougeL")
_LOWER_IS_BETTER = {"loss", "ppl"}
_MAX_REJECTS = 20
_MAX_FLIPS = 50

_CSS = """
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans SC",sans-serif;color:#111;
margin:0 auto;max-width:1000px;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.muted{color:#666}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#15803d;font-weight:600}.bad{color:#b91c1c;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:20px}pre{white-space:pre-wrap;margin:0;font:12px/1.4 ui-monospace,monospace}
svg{max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#333}
"""


# -- small helpers ------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return _e(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return "—"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def _tick(v: float) -> str:
    """Axis labels: short, scientific for tiny values such as learning rates."""
    v = round(v, 12)
    if v != 0 and abs(v) < 1e-2:
        return f"{v:.2e}"
    return f"{v:.4g}"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], num_cols: Sequence[int] = ()) -> str:
    """Rows are pre-escaped HTML cells."""
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(p: Path, limit: int | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if limit is not None and len(out) >= limit:
            break
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a half-written last line of a live run
        if isinstance(row, dict):
            out.append(row)
    return out


# -- SVG charts -------------------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _svg_frame(width: int, height: int, left: float, right: float, title: str, ticks: Sequence[float],
               sy: Callable[[float], float]) -> list[str]:
    """Opening of a chart: the <svg> element, its title, and horizontal grid lines with y labels."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    out.append(f'<text x="{left}" y="16" style="font-weight:600;font-size:13px">{_e(title)}</text>')
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_tick(t)}</text>')
    return out


def svg_line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str = "",
    *,
    xlabel: str = "",
    ylabel: str = "",
    width: int = 640,
    height: int = 300,
) -> str:
    """A line chart of named (x, y) series; a series of one point is drawn as a dot."""
    pts = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not pts:
        return ""
    left, right, top, bottom = 72, 20, 44, 40
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = _svg_frame(width, height, left, right, title, _ticks(y0, y1), sy)
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{height - bottom + 16}" text-anchor="middle">{_tick(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{_e(xlabel)}</text>')
    out.append(f'<text transform="translate(12 {top + ph / 2}) rotate(-90)" text-anchor="middle">{_e(ylabel)}</text>')
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        good = [(sx(x), sy(y)) for x, y in s if math.isfinite(y)]
        if len(good) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in good)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        if len(good) <= 30:  # dots for sparse series (evaluations), not for dense training logs
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in good)
        lx = left + 130 * i  # legend row between the title and the plot, never over the data
        out.append(f'<rect x="{lx}" y="24" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="33">{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_bar_chart(
    categories: Sequence[str],
    series: dict[str, Sequence[float | None]],
    title: str = "",
    *,
    width: int = 640,
    height: int = 280,
) -> str:
    """Grouped vertical bars: one group per category, one bar per series."""
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not categories or not vals:
        return ""
    # ~7.5 px per character at 11px: labels wider than their group are slanted.
    crowded = max(len(c) for c in categories) * 7.5 > (width - 64) / len(categories)
    left, right, top, bottom = 48, 16, 44, 64 if crowded else 40
    lo, hi = min(0.0, *vals), max(0.0, *vals) or 1.0
    pw, ph = width - left - right, height - top - bottom
    group = pw / len(categories)
    bar = group * 0.8 / max(len(series), 1)

    def sy(y: float) -> float:
        return top + (1 - (y - lo) / (hi - lo)) * ph

    out = _svg_frame(width, height, left, right, title, _ticks(lo, hi), sy)
    for ci, cat in enumerate(categories):
        gx = left + ci * group + group * 0.1
        for si, (_name, s) in enumerate(series.items()):
            v = s[ci]
            if v is None or not math.isfinite(v):
                continue
            y, base = sy(max(v, 0.0)), sy(min(v, 0.0))
            x = gx + si * bar
            color = PALETTE[si % len(PALETTE)]
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.92:.1f}" height="{base - y:.1f}" fill="{color}">'
            )
            out.append(f"<title>{_e(cat)}: {_fmt(v)}</title></rect>")
            out.append(
                f'<text x="{x + bar * 0.46:.1f}" y="{y - 3:.1f}" text-anchor="middle">{_fmt(round(v, 1))}</text>'
            )
        cx, cy = left + ci * group + group / 2, height - bottom + 14
        if crowded:  # long labels in narrow groups are slanted so they do not overlap
            out.append(f'<text transform="translate({cx:.1f} {cy}) rotate(-30)" text-anchor="end">{_e(cat)}</text>')
        else:
            out.append(f'<text x="{cx:.1f}" y="{cy}" text-anchor="middle">{_e(cat)}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#999"/>')
    for si, name in enumerate(series if len(series) > 1 else []):  # one series needs no legend
        lx = left + 10 + 120 * si
        out.append(f'<rect x="{lx}" y="26" width="10" height="10" fill="{PALETTE[si % len(PALETTE)]}"/>')
        out.append(f'<text x="{lx + 14}" y="35">{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


# -- sections --------------------------------------------------------------------------------------


def _config_section(cfg: dict[str, Any], parent: dict[str, Any] | None = None) -> str:
    if not cfg:
        return "<p class='muted'>No config.yaml in this run.</p>"
    model, method, train = cfg.get("model") or {}, cfg.get("method") or {}, cfg.get("train") or {}
    data, pref = cfg.get("data") or {}, cfg.get("pref") or {}

    def paths(v: Any) -> str:
        items = v if isinstance(v, list) else [v] if v else []
        return ", ".join(str(x.get("path") if isinstance(x, dict) else x) for x in items) or "—"

    stage = cfg.get("stage") or "sft"
    rows = [
        ("stage", stage),
        ("model", model.get("name_or_path")),
        ("parent run", f"{parent.get('run_dir') or parent.get('ref')} ({parent.get('stage', '?')}, step "
                       f"{parent.get('global_step', '?')}); this run {parent.get('how')}" if parent else None),
        ("preference", ", ".join(f"{k} {v}" for k, v in pref.items() if v not in (None, False, 0, 0.0, 1.0))
         or "paper defaults" if stage in ("dpo", "kto", "orpo", "simpo") else None),
        ("teacher", (cfg.get("teacher") or {}).get("name_or_path") if stage == "distill" else None),
        ("template", cfg.get("template") or "tokenizer's own"),
        ("method", method.get("type")),
        ("LoRA r / alpha", f"{method.get('r', '—')} / {method.get('alpha', '—')}" if method else None),
        ("learning rate", train.get("learning_rate")),
        ("epochs / max steps", f"{train.get('num_train_epochs', '—')} / {train.get('max_steps', '—')}"),
        (
            "batch × accumulation",
            f"{train.get('per_device_train_batch_size', '—')} × {train.get('gradient_accumulation_steps', '—')}",
        ),
        ("cutoff_len", data.get("cutoff_len")),
        ("train data", paths(data.get("train"))),
        ("validation data", paths(data.get("val"))),
        ("test data", paths(data.get("test"))),
    ]
    return _table(["setting", "value"], [(_e(k), _fmt(v)) for k, v in rows if v is not None])


def _length_histogram(rep: dict[str, Any]) -> str:
    """From ``lengths`` (token counts) or ``length_histogram`` ({edges, counts} or {bin: count})."""
    hist = rep.get("length_histogram")
    if isinstance(hist, dict) and "counts" in hist:
        edges = hist.get("edges") or hist.get("bins") or list(range(len(hist["counts"]) + 1))
        cats = [
            f"{edges[i]}–{edges[i + 1]}" if i + 1 < len(edges) else str(edges[i]) for i in range(len(hist["counts"]))
        ]
        return svg_bar_chart(cats, {"rows": hist["counts"]}, "Token length distribution")
    if isinstance(hist, dict) and hist:
        return svg_bar_chart(list(hist), {"rows": list(hist.values())}, "Token length distribution")
    lens = rep.get("lengths")
    if isinstance(lens, list) and lens and all(isinstance(x, int | float) for x in lens):
        lo, hi = min(lens), max(lens)
        nb = min(12, max(1, int(hi - lo) + 1))
        width = max((hi - lo) / nb, 1)
        counts = [0] * nb
        for x in lens:
            counts[min(int((x - lo) / width), nb - 1)] += 1
        cats = [f"{int(lo + i * width)}–{int(lo + (i + 1) * width)}" for i in range(nb)]
        return svg_bar_chart(cats, {"rows": counts}, "Token length distribution")
    return ""


def _data_section(run: Path) -> str:
    rep = _read_json(run / "data_report.json") or {}
    if not rep:
        return "<p class='muted'>No data_report.json in this run.</p>"
    cards = [
        (k.replace("_", " "), rep.get(k))
        for k in ("train_examples", "val_examples", "rejected", "truncated", "train_tokens", "train_trainable_tokens")
        if k in rep
    ]
    out = [
        "<div class='cards'>" + "".join(f"<div class='card'><b>{_fmt(v)}</b>{_e(k)}</div>" for k, v in cards) + "</div>"
    ]
    files = rep.get("files") or {}
    rows = []
    for split, items in files.items() if isinstance(files, dict) else [("", files)]:
        for f in items or []:
            rows.append(
                [_e(split), _e(f.get("path")), _e(f.get("format"))]
                + [_fmt(f.get(k)) for k in ("total", "valid", "rejected", "used")]
            )
    if rows:
        out.append(_table(["split", "file", "layout", "total", "valid", "rejected", "used"], rows, (3, 4, 5, 6)))
    out.append(_length_histogram(rep))
    rejects = _read_jsonl(run / "rejected.jsonl", _MAX_REJECTS)
    if rejects:
        out.append(f"<h3>Rejected rows (first {len(rejects)})</h3>")
        out.append(
            _table(
                ["where", "reason", "row"],
                [
                    (
                        _e(f"{r.get('file', '?')}:{r.get('line', '?')}"),
                        _e(r.get("reason")),
                        f"<pre>{_e(str(r.get('raw', ''))[:300])}</pre>",
                    )
                    for r in rejects
                ],
            )
        )
    return "".join(out)


def _curves_section(run: Path) -> str:
    logs = _read_jsonl(run / "metrics.jsonl")
    train = [(float(r["step"]), float(r["loss"])) for r in logs if "loss" in r and "step" in r]
    val = [(float(r["step"]), float(r["eval_loss"])) for r in logs if "eval_loss" in r and "step" in r]
    lr = [(float(r["step"]), float(r["lr"])) for r in logs if "lr" in r and "step" in r]
    if not train and not val:
        return "<p class='muted'>No training logs (metrics.jsonl) in this run.</p>"
    series = {k: v for k, v in (("train loss", train), ("validation loss", val)) if v}
    out = [svg_line_chart(series, "Loss", xlabel="step", ylabel="loss")]
    if lr:
        out.append(svg_line_chart({"learning rate": lr}, "Learning rate", xlabel="step", ylabel="lr", height=200))
    last = {
        "final train loss": train[-1][1] if train else None,
        "best validation loss": min(v for _, v in val) if val else None,
        "steps": int(max(p[0] for p in train + val)),
    }
    out.insert(
        0,
        "<div class='cards'>"
        + "".join(f"<div class='card'><b>{_fmt(v)}</b>{_e(k)}</div>" for k, v in last.items())
        + "</div>",
    )
    return "".join(out)


def _diagnostics_section(run: Path) -> str:
    """What the loss curves said during training (``diagnostics.json``; absent in older runs)."""
    data = _read_json(RunDir(run).diagnostics)
    if not isinstance(data, dict):
        return ""
    found = [f for f in data.get("findings") or [] if isinstance(f, dict)]
    head = "<h2>Training diagnostics</h2>"
    if not found:
        return (f"{head}<p class='good'>No over-fitting, flat loss, memorisation or divergence in the curves "
                f"({_fmt(data.get('steps_seen'))} steps, {_fmt(data.get('evaluations_seen'))} evaluations checked)."
                "</p>")
    out = [head]
    for f in found:
        causes = "".join(f"<li>{_e(c)}</li>" for c in f.get("causes") or [])
        actions = "".join(f"<li>{_e(a)}</li>" for a in f.get("actions") or [])
        out.append(f"<h3 class='bad'>{_e(f.get('title'))} <span class='muted'>(step {_fmt(f.get('step'))})</span></h3>"
                   f"<p>{_e(f.get('message'))}</p><p><b>Likely causes</b></p><ul>{causes}</ul>"
                   f"<p><b>What to do</b></p><ul>{actions}</ul>")
    return "".join(out)


def _delta_cell(key: str, d: Any) -> str:
    if d is None or not isinstance(d, int | float) or not math.isfinite(d):
        return "—"
    better = d < 0 if key in _LOWER_IS_BETTER else d > 0
    cls = "" if d == 0 or key not in (*_QUALITY, *_LOWER_IS_BETTER) else ("good" if better else "bad")
    return f"<span class='{cls}'>{'+' if d > 0 else ''}{_fmt(d)}</span>"


def _eval_section(ev: dict[str, Any]) -> str:
    model, base, delta = ev.get("model") or {}, ev.get("baseline") or {}, ev.get("delta") or {}
    refs = ev.get("refs") or {}
    out = [
        f"<p>{_fmt(ev.get('n'))} examples from <code>{_e(ev.get('data', '?'))}</code>; metrics: "
        f"{_e(', '.join(ev.get('metrics') or []))}; model <code>{_e(refs.get('model', ''))}</code>"
        + (f", baseline <code>{_e(refs.get('baseline', ''))}</code>" if base else "")
        + ".</p>"
    ]
    keys = [k for k, v in model.items() if isinstance(v, int | float) or v is None]
    head = ["metric", "baseline (before)", "model (after)", "delta"] if base else ["metric", "model"]
    rows = [
        [_e(k), _fmt(base.get(k)), _fmt(model.get(k)), _delta_cell(k, delta.get(k))]
        if base
        else [_e(k), _fmt(model.get(k))]
        for k in keys
    ]
    out.append(_table(head, rows, (1, 2, 3)))
    cats = [k for k in _QUALITY if k in model]
    if cats:

        def pct(m: dict[str, Any], k: str) -> float | None:
            v = m.get(k)
            return None if v is None else v * 100 if k in _UNIT_SCALE else v

        series = {"baseline": [pct(base, k) for k in cats]} if base else {}
        series["model"] = [pct(model, k) for k in cats]
        out.append(svg_bar_chart(cats, series, "Quality metrics (%; BLEU and ROUGE on their own 0-100 scale)"))
    cls = ((ev.get("details") or {}).get("model") or {}).get("classification")
    if cls:
        per = cls.get("per_label") or {}
        out.append("<h3>Per label (model)</h3>")
        out.append(
            _table(
                ["label", "precision", "recall", "F1", "support"],
                [
                    [_label(k), *(_fmt(v.get(c)) for c in ("precision", "recall", "f1")),
                     _fmt(int(v.get("support", 0)))]
                    for k, v in per.items()
                ],
                (1, 2, 3, 4),
            )
        )
        out.append(_confusion(cls))
    out.append(_preference(ev.get("preference")))
    out.append(_tasks(ev))
    return "".join(out)


def _preference(pref: dict[str, Any] | None) -> str:
    """Held-out pairs: which reply each model prefers, and the implicit reward (``evaluate/prefeval.py``)."""
    if not pref:
        return ""
    model, base = pref.get("model") or {}, pref.get("baseline") or {}
    keys = ("pref_accuracy", "chosen_logp", "rejected_logp", "logp_margin")
    rows = [[_e(k), _fmt(base.get(k)), _fmt(model.get(k))] for k in keys if k in model]
    reward = "".join(f"; {_e(k.replace('_', ' '))} {_fmt(pref[k])}" for k in ("reward_accuracy", "reward_margin")
                     if k in pref)
    return (f"<h3>Preference pairs</h3><p>{_fmt(pref.get('n'))} held-out pairs; pref accuracy = share where the "
            f"model gives the chosen reply a higher log-probability than the rejected one; implicit reward "
            f"(beta {_fmt(pref.get('beta'))}) of the model against the baseline{reward}.</p>"
            + _table(["", "baseline (before)", "model (after)"], rows, (1, 2)))


def _tasks(ev: dict[str, Any]) -> str:

    tasks, base = ev.get("per_task") or {}, bool(ev.get("baseline"))
    rows = []
    for task, e in tasks.items():
        k = headline_metric(e.get("model") or {})
        if k is None:
            continue
        b, m = (e.get("baseline") or {}).get(k), e["model"][k]
        d = m - b if isinstance(b, int | float) else None
        cells = [_fmt(b), _fmt(m), _delta_cell(k, d)] if base else [_fmt(m)]
        rows.append([_e(task), _fmt(e.get("n")), _e(k), *cells])
    if not rows:
        return ""
    head = ["task", "n", "metric", *(["baseline", "model", "delta"] if base else ["model"])]
    return "<h3>Per task</h3>" + _table(head, rows, (1, 3, 4, 5))


_MAX_CONFUSION = 30


def _label(x: str) -> str:
    return _e(x) if x else "<span class='muted'>(empty)</span>"


def _confusion(cls: dict[str, Any]) -> str:
    """Rows: the reference label; columns: what the model answered (stray answers included)."""
    labels, conf = cls.get("labels") or [], cls.get("confusion") or []
    if not labels or len(labels) > _MAX_CONFUSION:
        return ""
    head = ["reference ↓ / answer →", *(x or "(empty)" for x in labels)]
    rows = [[f"<b>{_label(lab)}</b>", *(str(n) if n else "<span class='muted'>0</span>" for n in row)]
            for lab, row in zip(labels, conf, strict=False)]
    return "<h3>Confusion matrix (model)</h3>" + _table(head, rows, tuple(range(1, len(labels) + 1)))


def _flips_section(ev: dict[str, Any]) -> str:
    flips = ev.get("flips") or []
    if not ev.get("baseline"):
        return "<p class='muted'>No baseline was evaluated.</p>"
    if not flips:
        return "<p>No example changed between right and wrong.</p>"
    up = sum(f.get("direction") == "wrong_to_right" for f in flips)
    out = [
        f"<p><span class='good'>{up} wrong → right</span>, "
        f"<span class='bad'>{len(flips) - up} right → wrong</span>"
        + (f" (first {_MAX_FLIPS} shown)" if len(flips) > _MAX_FLIPS else "")
        + ".</p>"
    ]
    rows = []
    for f in flips[:_MAX_FLIPS]:
        good = f.get("direction") == "wrong_to_right"
        tag = f"<span class='{'good' if good else 'bad'}'>{'wrong → right' if good else 'right → wrong'}</span>"
        rows.append([tag] + [f"<pre>{_e(f.get(k))}</pre>" for k in ("prompt", "reference", "baseline", "model")])
    out.append(_table(["change", "prompt", "reference", "baseline answer", "model answer"], rows))
    return "".join(out)


def _latency_section(ev: dict[str, Any]) -> str:
    lat, fg = ev.get("latency") or {}, ev.get("forgetting") or {}
    out = []
    if lat.get("n"):
        k, b = lat.get("k_s_per_token"), lat.get("b_s")
        out.append(
            f"<p>Single-request latency fitted as <b>t = k·x + b</b> over {lat['n']} requests "
            f"(x = generated tokens): k = {_fmt(k)} s/token, b = {_fmt(b)} s "
            f"(≈ {_fmt(lat.get('tokens_per_s'))} tokens/s after the first token).</p>"
        )
        if isinstance(k, int | float) and isinstance(b, int | float):
            out.append(
                _table(
                    ["answer length", "expected time"], [[_fmt(x), f"{k * x + b:.2f} s"] for x in (16, 64, 256)], (0, 1)
                )
            )
    if fg:
        rows = [[_e(s), _fmt(fg.get(s))] for s in ("baseline", "model") if s in fg]
        if "delta" in fg:
            rows.append(["delta", _delta_cell("accuracy", fg["delta"])])
        out.append(f"<h3>General-ability check ({_fmt(fg.get('n'))} short questions)</h3>")
        out.append(_table(["", "share answered correctly"], rows, (1,)))
    return "".join(out) or "<p class='muted'>Not measured.</p>"


def render_report(run: Path) -> str:

    cfg = RunDir(run).raw_config()
    result = RunDir(run).eval_result()
    ev = result.model_dump() if result else {}
    name = cfg.get("name") or run.name
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{_e(name)} — sftkit report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(name)}</h1><p class='muted'>{_e(run.resolve())} · report written {stamp}</p>",
        "<h2>Configuration</h2>",
        _config_section(cfg, RunDir(run).read_summary().get("parent")),
        "<h2>Data</h2>",
        _data_section(run),
        "<h2>Training curves</h2>",
        _curves_section(run),
        _diagnostics_section(run),
        "<h2>Evaluation: before and after</h2>",
        _eval_section(ev) if ev else "<p class='muted'>No eval.json yet: run <code>sft eval RUN</code>.</p>",
    ]
    if ev:
        parts += [
            "<h2>Examples that changed</h2>",
            _flips_section(ev),
            "<h2>Latency and general ability</h2>",
            _latency_section(ev),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into the run folder and return its path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a run folder")
    out = run / "report.html"
    out.write_text(render_report(run), encoding="utf-8")
    return out
