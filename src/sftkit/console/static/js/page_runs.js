// The runs folder: every run with its status, refreshed while any of them is running.

import { api } from "./api.js";
import { ago, basename, clear, fmt, h, table, fill } from "./dom.js";
import { t } from "./i18n.js";

export function badge(status, stage) {
  const text = t("st_" + status) + (status === "running" && stage ? ` · ${t("stage_" + stage)}` : "");
  return h("span", { class: `badge ${status}`, "data-status": status }, text);
}

export function progressText(r) {
  const total = r.steps?.total;
  if (!total) return fmt(r.step);
  return `${fmt(r.step)} / ${r.steps.approx ? "≈" : ""}${fmt(total)}`;
}

export function renderRuns(page) {
  const chosen = new Set();
  const body = h("div", { id: "runs" }, h("p", { class: "muted" }, t("loading")));
  const compareBtn = h("button", { type: "button", id: "compare-selected", disabled: true, onclick: () => {
    location.hash = `#/compare?runs=${[...chosen].map(encodeURIComponent).join(",")}`;
  } }, t("compare_selected"));
  page.append(h("div", { class: "title-row" }, h("h1", null, t("runs_title")),
    h("a", { href: "#/new", class: "button primary" }, t("nav_new")), compareBtn), body);
  let timer = null;
  let alive = true;
  const load = async () => {
    let data;
    try {
      data = await api("/runs");
    } catch (e) {
      fill(body, h("p", { class: "error" }, e.message));
      return;
    }
    if (!alive) return;
    if (!data.runs.length) {
      fill(body, h("p", null, t("no_runs", { dir: data.runs_dir }), " ", h("a", { href: "#/new" }, t("nav_new"))));
      return;
    }
    const rows = data.runs.map((r) => {
      const box = h("input", { type: "checkbox", "data-run": r.name, checked: chosen.has(r.name), onchange: (e) => {
        if (e.target.checked) chosen.add(r.name); else chosen.delete(r.name);
        compareBtn.disabled = chosen.size < 2;
      } });
      return [box, h("a", { href: `#/run/${encodeURIComponent(r.name)}`, class: "run-link" }, r.name), badge(r.status, r.stage),
        progressText(r), fmt(r.loss), fmt(r.eval_loss), fmt(r.tokens_per_s), basename(r.model), r.method,
        ago(r.updated, t)];
    });
    fill(body, table(["", t("name"), t("status"), t("step"), t("loss"), t("eval_loss"), t("tok_s"), t("model"),
      t("method"), t("updated")], rows, { num: [3, 4, 5, 6], class: "runs" }));
    if (data.runs.some((r) => r.status === "running" || r.status === "incomplete")) timer = setTimeout(load, 3000);
  };
  load();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
