// Small DOM helpers. Text always goes in as text nodes (never innerHTML), so data from run
// folders (prompts, answers, file names) cannot inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = Boolean(v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function fmt(v, digits = 4) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return "—";
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}

export function signed(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "—";
  return (v > 0 ? "+" : "") + fmt(v);
}

export function basename(p) {
  if (!p) return "";
  const parts = String(p).split(/[\\/]/).filter(Boolean);
  return parts.length ? parts[parts.length - 1] : String(p);
}

export function ago(ts, t) {
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return t("ago_s", { n: Math.round(s) });
  if (s < 3600) return t("ago_m", { n: Math.round(s / 60) });
  if (s < 86400) return t("ago_h", { n: Math.round(s / 3600) });
  return new Date(ts * 1000).toLocaleString();
}

export function table(head, rows, opts = {}) {
  const thead = h("thead", null, h("tr", null, head.map((c) => h("th", null, c))));
  const tbody = h("tbody", null, rows.map((r) => h("tr", null, r.map((c, i) => h("td", {
    class: (opts.num || []).includes(i) ? "num" : null,
  }, c)))));
  return h("table", { class: opts.class || null }, thead, tbody);
}

export function download(filename, text, type = "text/yaml") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// Replace an element's children (arrays are flattened, null/false skipped).
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}
