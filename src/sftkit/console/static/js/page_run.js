// One run: live curves and log while it trains (polled, no reload), stop / resume, and
// afterwards the results and the report.

import { api, post, runFileUrl } from "./api.js";
import { lineChart } from "./charts.js";
import { clear, fmt, h, signed, table, fill } from "./dom.js";
import { t } from "./i18n.js";
import { prefillYaml } from "./page_new.js";
import { badge, progressText } from "./page_runs.js";

const POLL_MS = 1500;

function series(rows, key) {
  return rows.filter((r) => typeof r[key] === "number" && typeof r.step === "number").map((r) => [r.step, r[key]]);
}

function drawCharts(box, rows) {
  fill(box, 
    lineChart({ series: [{ name: t("train_loss"), points: series(rows, "loss") },
      { name: t("val_loss"), points: series(rows, "eval_loss"), markers: true }],
    title: t("loss"), xlabel: t("step"), ylabel: t("loss"), empty: t("no_metrics") }),
    lineChart({ series: [{ name: t("tok_s"), points: series(rows, "tokens_per_s"), color: "#16a34a" }],
      title: t("throughput"), xlabel: t("step"), ylabel: t("tok_s"), empty: t("no_metrics") }),
    lineChart({ series: [{ name: "lr", points: series(rows, "lr"), color: "#9333ea" }], title: t("lr"),
      xlabel: t("step"), ylabel: "lr", height: 200, empty: t("no_metrics") }));
}

function cards(d, rows) {
  const evals = series(rows, "eval_loss").map((p) => p[1]);
  const items = [[t("step"), progressText(d)], [t("loss"), fmt(d.loss)],
    [t("best_eval"), evals.length ? fmt(Math.min(...evals)) : "—"], [t("tok_s"), fmt(d.tokens_per_s)]];
  if (d.train_summary) items.push([t("seconds"), fmt(d.train_summary.train_seconds)]);
  return h("div", { class: "cards" }, items.map(([k, v]) => h("div", { class: "kpi" }, h("b", null, v), k)));
}

// What the loss curves say (sftkit.train.diagnose): shown while the run trains, as soon as a check fires.
function diagnosis(d) {
  if (!d.diagnostics?.length) return null;
  return h("section", { class: "card", id: "diagnostics" }, h("h2", null, t("diagnostics")),
    d.diagnostics.map((f) => h("div", { class: "diagnosis" },
      h("p", null, h("b", { class: "bad" }, f.title), " ", h("span", { class: "muted" }, t("at_step", { n: f.step }))),
      h("p", null, f.message),
      h("p", null, h("b", null, t("likely_causes"))), h("ul", null, (f.causes || []).map((c) => h("li", null, c))),
      h("p", null, h("b", null, t("what_to_do"))), h("ul", null, (f.actions || []).map((a) => h("li", null, a))))));
}

function progressBar(d) {
  const total = d.steps?.total;
  if (!total) return null;
  const pct = Math.min(100, (100 * (d.step || 0)) / total);
  return h("div", { class: "progress", title: `${pct.toFixed(0)}%` }, h("div", { style: `width:${pct}%` }));
}

function results(ev) {
  if (!ev) return null;
  const keys = Object.keys(ev.model).filter((k) => typeof ev.model[k] === "number" || ev.model[k] === null);
  const hasBase = Object.keys(ev.baseline).length > 0;
  const rows = keys.map((k) => hasBase ? [k, fmt(ev.baseline[k]), fmt(ev.model[k]), deltaCell(k, ev.delta[k])] : [k, fmt(ev.model[k])]);
  return h("div", { id: "results" },
    h("h2", null, t("results")),
    h("p", null, t("eval_line", { n: ev.n, data: ev.data || "" })),
    table(hasBase ? [t("metric"), t("before"), t("after"), t("delta")] : [t("metric"), t("after")], rows, { num: [1, 2, 3] }),
    hasBase ? h("p", null, h("span", { class: "good" }, t("flips_up", { n: ev.flips.wrong_to_right })), " · ",
      h("span", { class: "bad" }, t("flips_down", { n: ev.flips.right_to_wrong }))) : null);
}

function deltaCell(key, d) {
  if (typeof d !== "number") return "—";
  const lowerBetter = key === "loss" || key === "ppl";
  const neutral = d === 0 || key === "gen_tokens_per_s" || key === "mean_completion_tokens";
  return h("span", { class: neutral ? null : (lowerBetter ? d < 0 : d > 0) ? "good" : "bad" }, signed(d));
}

function actions(d, refresh, msg) {
  const act = async (path, body = {}) => {
    clear(msg);
    try {
      await post(`/runs/${encodeURIComponent(d.name)}/${path}`, body);
    } catch (e) {
      msg.append(h("p", { class: "error" }, e.message));
    }
    refresh();
  };
  return h("div", { class: "row actions" },
    d.can_stop && !d.stopping ? h("button", { type: "button", id: "stop", onclick: () => act("stop") }, t("stop")) : null,
    d.can_stop && d.stopping ? h("button", { type: "button", id: "force-stop", class: "danger",
      onclick: () => act("stop", { force: true }) }, t("force_stop")) : null,
    d.can_resume ? h("button", { type: "button", id: "resume", onclick: () => act("resume") }, t("resume")) : null,
    d.can_evaluate && !d.has_eval ? h("button", { type: "button", id: "evaluate", onclick: () => act("evaluate") },
      t("evaluate")) : null,
    d.trained && d.status !== "running" ? h("a", { class: "button", href: `#/chat?run=${encodeURIComponent(d.name)}` }, t("chat_with")) : null,
    d.has_report ? h("a", { class: "button", id: "open-report", href: runFileUrl(d.name, "report.html"), target: "_blank" },
      t("open_report")) : null,
    d.config_yaml ? h("button", { type: "button", id: "clone", onclick: () => {
      prefillYaml(d.config_yaml, `${d.name}-2`);
      location.hash = "#/new";
    } }, t("clone")) : null);
}

function configBox(d) {
  if (!d.config_file) return null;
  return h("details", { class: "section" }, h("summary", null, `${t("config")} (${d.config_file})`),
    h("pre", { class: "cmd" }, d.command || ""),
    h("pre", { class: "yaml", id: "run-config" }, d.config_yaml),
    h("a", { class: "button small", href: runFileUrl(d.name, d.config_file, true) }, t("download_yaml")));
}

export function renderRun(page, { arg: name }) {
  const head = h("div", { class: "title-row" });
  const msg = h("div");
  const top = h("div");
  const charts = h("div", { class: "charts", id: "charts" });
  const logBox = h("pre", { class: "log", id: "log" });
  const bottom = h("div");
  page.append(head, msg, top, h("section", { class: "card" }, h("h2", null, t("curves")), charts),
    h("section", { class: "card" }, h("h2", null, t("log")), logBox), bottom);
  const st = { rows: [], offset: 0, digest: null, logOffset: -1, last: null, alive: true, timer: null, reportShown: false };

  const poll = async () => {
    clearTimeout(st.timer);
    let d;
    try {
      d = await api(`/runs/${encodeURIComponent(name)}`);
      const m = await api(`/runs/${encodeURIComponent(name)}/metrics?offset=${st.offset}&digest=${st.digest || ""}`);
      if (m.reset) st.rows = [];
      st.rows.push(...m.rows);
      st.offset = m.offset;
      st.digest = m.digest;
      const lg = await api(`/runs/${encodeURIComponent(name)}/log?offset=${st.logOffset}`);
      if (lg.text) {
        const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 20;
        if (st.logOffset < 0) logBox.textContent = "";
        logBox.textContent += lg.text;
        if (atEnd) logBox.scrollTop = logBox.scrollHeight;
      }
      st.logOffset = lg.offset;
    } catch (e) {
      fill(msg, h("p", { class: "error" }, e.message));
      if (e.status === 404) return;
      st.timer = setTimeout(poll, POLL_MS * 3);
      return;
    }
    if (!st.alive) return;
    draw(d);
    // A run trained by `sft train` in a terminal reads "incomplete" until it writes its summary:
    // keep following its files, more slowly.
    if (d.status === "running") st.timer = setTimeout(poll, POLL_MS);
    else if (d.status === "incomplete") st.timer = setTimeout(poll, POLL_MS * 4);
  };

  const draw = (d) => {
    fill(head, h("h1", null, d.name), badge(d.status, d.stage),
      d.detail ? h("span", { class: "muted detail" }, d.detail) : null);
    fill(top, actions(d, poll, msg), progressBar(d), cards(d, st.rows), diagnosis(d));
    drawCharts(charts, st.rows);
    const changed = !st.last || st.last.status !== d.status || st.last.has_report !== d.has_report;
    if (changed) {
      fill(bottom, 
        d.eval ? h("section", { class: "card" }, results(d.eval)) : null,
        d.has_report ? h("section", { class: "card" }, h("h2", null, t("report")),
          h("iframe", { class: "report", id: "report-frame", src: runFileUrl(d.name, "report.html"), title: "report.html" })) : null,
        h("section", { class: "card" }, configBox(d),
          h("p", { class: "files" }, t("files"), ": ", d.files.map((f) => [h("a", { href: runFileUrl(d.name, f), target: "_blank" }, f), " "]))));
    }
    st.last = d;
  };
  poll();
  return () => {
    st.alive = false;
    clearTimeout(st.timer);
  };
}
