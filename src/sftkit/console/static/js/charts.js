// Charts as inline SVG, drawn here (no library): line charts with a legend and optional
// vertical markers, and bar charts. Colours match report.html.

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

export function ticks(lo, hi, n = 5, integer = false) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

// Tick labels with as many decimals as the tick spacing needs (10.855 and 10.86 stay apart).
function labeller(tickList) {
  const step = tickList.length > 1 ? Math.abs(tickList[1] - tickList[0]) : Math.abs(tickList[0]) || 1;
  const big = Math.max(...tickList.map(Math.abs));
  if (big >= 1e5 || (big !== 0 && big < 1e-2)) return (v) => (v === 0 ? "0" : v.toExponential(1));
  const dec = Math.min(6, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9) + (String(step).includes("25") ? 1 : 0)));
  return (v) => v.toFixed(dec);
}

function bounds(series, vlines) {
  const xs = [];
  const ys = [];
  for (const sr of series) for (const [x, y] of sr.points) if (Number.isFinite(x) && Number.isFinite(y)) {
    xs.push(x);
    ys.push(y);
  }
  for (const v of vlines) xs.push(v.x);
  if (!xs.length) return null;
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (!ys.length) [y0, y1] = [0, 1];
  if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
  const pad = (y1 - y0) * 0.05;
  return { x0, x1, y0: y0 - pad, y1: y1 + pad };
}

function frame(svg, b, geo, opts) {
  const { left, top, w, hgt } = geo;
  const sx = (x) => left + ((x - b.x0) / (b.x1 - b.x0)) * w;
  const sy = (y) => top + hgt - ((y - b.y0) / (b.y1 - b.y0)) * hgt;
  const yt = ticks(b.y0, b.y1);
  const ylab = labeller(yt);
  for (const t of yt) {
    svg.append(s("line", { x1: left, x2: left + w, y1: sy(t), y2: sy(t), class: "grid" }));
    svg.append(s("text", { x: left - 6, y: sy(t) + 4, "text-anchor": "end" }, ylab(t)));
  }
  const xt = ticks(b.x0, b.x1, 6, opts.intX);
  const xlab = labeller(xt);
  for (const t of xt) {
    svg.append(s("text", { x: sx(t), y: top + hgt + 16, "text-anchor": "middle" }, xlab(t)));
  }
  svg.append(s("rect", { x: left, y: top, width: w, height: hgt, class: "plot" }));
  if (opts.title) svg.append(s("text", { x: left, y: 16, class: "title" }, opts.title));
  if (opts.xlabel) svg.append(s("text", { x: left + w / 2, y: top + hgt + 32, "text-anchor": "middle", class: "axis" }, opts.xlabel));
  if (opts.ylabel) {
    svg.append(s("text", { x: 10, y: top + hgt / 2, transform: `rotate(-90 10 ${top + hgt / 2})`,
      "text-anchor": "middle", class: "axis" }, opts.ylabel));
  }
  return { sx, sy };
}

function legend(svg, items, x, y) {
  let dx = x;
  for (const it of items) {
    svg.append(s("line", { x1: dx, x2: dx + 16, y1: y - 4, y2: y - 4, stroke: it.color, "stroke-width": 2.5,
      "stroke-dasharray": it.dash || null }));
    const t = s("text", { x: dx + 20, y }, it.name);
    svg.append(t);
    dx += 28 + 7 * [...it.name].reduce((n, ch) => n + (ch.charCodeAt(0) > 0x2e80 ? 2 : 1), 0);
  }
}

// Dashed vertical lines (e.g. cutoffs); a label near the right edge goes to the left of its line.
function markers(svg, vlines, sx, geo) {
  vlines.forEach((v, i) => {
    const x = sx(v.x);
    svg.append(s("line", { x1: x, x2: x, y1: geo.top, y2: geo.top + geo.hgt, stroke: v.color || "#c44e52",
      "stroke-dasharray": "4 3", "stroke-width": 1.5 }));
    const right = x > geo.left + geo.w - 40;
    svg.append(s("text", { x: right ? x - 3 : x + 3, y: geo.top + 12 + 12 * i, class: "mark",
      "text-anchor": right ? "end" : "start" }, v.label));
  });
}

// series: [{name, points: [[x, y], ...], color?, dash?}]; vlines: [{x, label, color?}]
export function lineChart({ series, title, xlabel, ylabel, width = 620, height = 260, vlines = [], empty }) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title || "" });
  const drawn = series.filter((sr) => sr.points.length);
  const b = bounds(drawn, vlines);
  if (!b) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted" }, empty || "—"));
    return svg;
  }
  const geo = { left: 66, top: 28, w: width - 84, hgt: height - 72 };
  const intX = drawn.every((sr) => sr.points.every(([x]) => Number.isInteger(x)));
  const { sx, sy } = frame(svg, b, geo, { title, xlabel, ylabel, intX });
  drawn.forEach((sr, i) => {
    const color = sr.color || PALETTE[i % PALETTE.length];
    const pts = sr.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (pts.length === 1) {
      svg.append(s("circle", { cx: sx(pts[0][0]), cy: sy(pts[0][1]), r: 3.5, fill: color, "data-series": sr.name }));
    } else {
      svg.append(s("polyline", { points: pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "),
        fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": sr.dash || null, "data-series": sr.name }));
    }
    if (sr.markers) for (const [x, y] of pts) svg.append(s("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: color }));
    sr.color = color;
  });
  markers(svg, vlines, sx, geo);
  legend(svg, drawn.map((sr) => ({ name: sr.name, color: sr.color, dash: sr.dash })), geo.left + 160, 16);
  return svg;
}

// Vertical bars: categories on x, one bar per series in each group.
export function barChart({ categories, series, title, width = 620, height = 240 }) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title || "" });
  const vals = series.flatMap((sr) => sr.values.filter((v) => Number.isFinite(v)));
  if (!categories.length || !vals.length) return svg;
  const b = { x0: 0, x1: 1, y0: Math.min(0, ...vals), y1: Math.max(...vals, 0) * 1.08 || 1 };
  const geo = { left: 56, top: 28, w: width - 72, hgt: height - 64 };
  const sy = (y) => geo.top + geo.hgt - ((y - b.y0) / (b.y1 - b.y0)) * geo.hgt;
  const yt = ticks(b.y0, b.y1);
  const ylab = labeller(yt);
  for (const t of yt) {
    svg.append(s("line", { x1: geo.left, x2: geo.left + geo.w, y1: sy(t), y2: sy(t), class: "grid" }));
    svg.append(s("text", { x: geo.left - 6, y: sy(t) + 4, "text-anchor": "end" }, ylab(t)));
  }
  const group = geo.w / categories.length;
  const bw = Math.min(28, (group * 0.8) / series.length);
  categories.forEach((c, ci) => {
    series.forEach((sr, si) => {
      const v = sr.values[ci];
      if (!Number.isFinite(v)) return;
      const x = geo.left + ci * group + (group - bw * series.length) / 2 + si * bw;
      const y = sy(Math.max(v, 0));
      svg.append(s("rect", { x, y, width: bw - 2, height: Math.max(1, Math.abs(sy(v) - sy(0))),
        fill: sr.color || PALETTE[si % PALETTE.length] }));
    });
    svg.append(s("text", { x: geo.left + ci * group + group / 2, y: geo.top + geo.hgt + 16, "text-anchor": "middle" }, c));
  });
  if (title) svg.append(s("text", { x: geo.left, y: 16, class: "title" }, title));
  legend(svg, series.map((sr, i) => ({ name: sr.name, color: sr.color || PALETTE[i % PALETTE.length] })),
    geo.left + 200, 16);
  return svg;
}

// A histogram from bin edges and counts (as data/stats returns), with marker lines.
export function histogram({ edges, counts, title, xlabel, ylabel, vlines = [], width = 620, height = 240 }) {
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title || "" });
  if (!counts.length) return svg;
  const b = { x0: edges[0], x1: Math.max(edges[edges.length - 1], ...vlines.map((v) => v.x)), y0: 0,
    y1: Math.max(...counts) * 1.1 || 1 };
  if (b.x1 === b.x0) b.x1 = b.x0 + 1;
  const geo = { left: 66, top: 28, w: width - 84, hgt: height - 72 };
  const { sx, sy } = frame(svg, b, geo, { title, xlabel, ylabel });
  counts.forEach((c, i) => {
    const x = sx(edges[i]);
    svg.append(s("rect", { x, y: sy(c), width: Math.max(1, sx(edges[i + 1]) - x - 1), height: sy(0) - sy(c),
      fill: PALETTE[0], opacity: 0.85 }));
  });
  markers(svg, vlines, sx, geo);
  return svg;
}
