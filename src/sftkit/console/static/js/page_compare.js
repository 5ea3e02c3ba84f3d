// Two or more runs side by side: curves on one chart, results in one table, the config keys
// that differ.

import { api } from "./api.js";
import { lineChart, PALETTE } from "./charts.js";
import { clear, fmt, h, signed, table, fill } from "./dom.js";
import { t } from "./i18n.js";
import { badge } from "./page_runs.js";

function pts(rows, key) {
  return rows.filter((r) => typeof r[key] === "number" && typeof r.step === "number").map((r) => [r.step, r[key]]);
}

function picker(all, chosen) {
  const set = new Set(chosen);
  const go = () => { location.hash = `#/compare?runs=${[...set].map(encodeURIComponent).join(",")}`; };
  return h("div", { class: "card chooser" }, h("p", null, t("compare_pick")),
    h("div", { class: "chips" }, all.map((r) => h("label", { class: "chip" },
      h("input", { type: "checkbox", "data-run": r.name, checked: set.has(r.name),
        onchange: (e) => { if (e.target.checked) set.add(r.name); else set.delete(r.name); } }),
      ` ${r.name} `, badge(r.status)))),
    h("button", { type: "button", id: "compare-go", onclick: go }, t("compare")));
}

function curves(runs) {
  const loss = [];
  const thr = [];
  runs.forEach((r, i) => {
    const color = PALETTE[i % PALETTE.length];
    loss.push({ name: `${r.name}`, points: pts(r.metrics, "loss"), color });
    const val = pts(r.metrics, "eval_loss");
    if (val.length) loss.push({ name: `${r.name} (${t("val")})`, points: val, color, dash: "5 3", markers: true });
    thr.push({ name: r.name, points: pts(r.metrics, "tokens_per_s"), color });
  });
  return h("div", { class: "charts", id: "compare-charts" },
    lineChart({ series: loss, title: t("loss"), xlabel: t("step"), ylabel: t("loss"), empty: t("no_metrics") }),
    lineChart({ series: thr, title: t("throughput"), xlabel: t("step"), ylabel: t("tok_s"), empty: t("no_metrics") }));
}

function metricsTable(runs) {
  const rows = [
    [t("status"), ...runs.map((r) => badge(r.status))],
    [t("steps"), ...runs.map((r) => fmt(r.train_summary?.global_step))],
    [t("seconds"), ...runs.map((r) => fmt(r.train_summary?.train_seconds))],
    [t("train_loss"), ...runs.map((r) => fmt(r.train_summary?.train_loss))],
    [t("best_eval"), ...runs.map((r) => fmt(r.train_summary?.best_eval_loss))],
  ];
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.eval?.model || {})))];
  for (const k of keys) {
    rows.push([k, ...runs.map((r) => {
      const v = r.eval?.model?.[k];
      const d = r.eval?.delta?.[k];
      return v === undefined ? "—" : `${fmt(v)}${typeof d === "number" ? ` (${signed(d)})` : ""}`;
    })]);
  }
  return h("div", null, h("h2", null, t("metrics")), h("p", { class: "muted" }, t("metrics_help")),
    table(["", ...runs.map((r) => r.name)], rows, { class: "compare", num: runs.map((_, i) => i + 1) }));
}

function configTable(data, showAll) {
  const keys = showAll ? data.keys : data.differ;
  const cell = (v) => {
    if (v === undefined) return "—";
    if (Array.isArray(v) && v.every((x) => x && typeof x === "object" && "path" in x)) {
      return v.map((x) => x.path + (x.format ? ` [${x.format}]` : "")).join(", ") || "[]";
    }
    return typeof v === "object" && v !== null ? JSON.stringify(v) : fmt(v);
  };
  return table([t("key"), ...data.runs.map((r) => r.name)],
    keys.map((k) => [h("code", null, k), ...data.runs.map((r) => cell(r.config[k]))]),
    { class: "compare config-diff" });
}

export function renderCompare(page, { params }) {
  const chosen = (params.get("runs") || "").split(",").filter(Boolean);
  const body = h("div", { id: "compare" });
  page.append(h("h1", null, t("compare_title")), body);
  const load = async () => {
    const all = (await api("/runs")).runs;
    fill(body, picker(all, chosen));
    if (chosen.length < 2) return;
    const q = chosen.map((n) => `run=${encodeURIComponent(n)}`).join("&");
    let data;
    try {
      data = await api(`/compare?${q}`);
    } catch (e) {
      body.append(h("p", { class: "error" }, e.message));
      return;
    }
    const cfgBox = h("div");
    let showAll = false;
    const drawCfg = () => fill(cfgBox, configTable(data, showAll));
    drawCfg();
    body.append(h("section", { class: "card" }, h("h2", null, t("curves")), curves(data.runs)),
      h("section", { class: "card" }, metricsTable(data.runs)),
      h("section", { class: "card" }, h("h2", null, t("config_diff", { n: data.differ.length })),
        h("label", null, h("input", { type: "checkbox", onchange: (e) => { showAll = e.target.checked; drawCfg(); } }),
          ` ${t("show_all_keys")}`), cfgBox));
  };
  load().catch((e) => body.append(h("p", { class: "error" }, e.message)));
  return null;
}
