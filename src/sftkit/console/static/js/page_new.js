// New run: model and data (checked before training), the config as a form generated from the
// schema or as YAML, the memory estimate, and Start. What Start runs is shown first.

import { api, post } from "./api.js";
import { histogram, lineChart } from "./charts.js";
import { append, clear, download, fmt, h, table, fill } from "./dom.js";
import { t } from "./i18n.js";
import { pick } from "./picker.js";

const FIRST = ["run", "model", "data"]; // sections in the first card, next to the data check
let saved = null; // the form survives a visit to another page (same browser tab)

// "New run from this config" on a run's page: its YAML, under a new name, with the run folder
// left to the console (it is derived from the name).
export function prefillYaml(text, name) {
  const yaml = text.replace(/^output_dir:.*\n/m, "").replace(/^name:.*$/m, `name: ${name}`);
  saved = { schema: saved?.schema || null, values: saved?.values || {}, tab: "yaml", yaml };
}

function fieldId(key) {
  return "f-" + key.replace(/\./g, "-");
}

function widget(f, st) {
  const id = fieldId(f.key);
  const onInput = (value) => {
    st.values[f.key] = value;
    st.dirty = true;
    el.closest(".field").classList.toggle("changed", value.trim() !== (f.default_text ?? "").trim());
  };
  let el;
  const value = st.values[f.key] ?? "";
  if (f.kind === "bool") {
    el = h("input", { type: "checkbox", id, checked: value === "true", onchange: (e) => onInput(e.target.checked ? "true" : "false") });
  } else if (f.kind === "enum") {
    const opts = [...(f.nullable ? [""] : []), ...f.choices];
    el = h("select", { id, onchange: (e) => onInput(e.target.value) },
      opts.map((c) => h("option", { value: c, selected: c === value ? "selected" : null }, c === "" ? "(null)" : c)));
  } else if (f.kind === "sources") {
    el = h("textarea", { id, rows: 2, placeholder: t("sources_placeholder"), value, spellcheck: "false",
      oninput: (e) => onInput(e.target.value) });
  } else {
    el = h("input", { type: "text", id, value, placeholder: f.default_text ?? "", spellcheck: "false",
      oninput: (e) => onInput(e.target.value) });
  }
  return el;
}

function browseButton(f, st, el) {
  if (f.kind !== "sources" && f.key !== "model.name_or_path") return null;
  const mode = f.kind === "sources" ? "file" : "model";
  return h("button", { type: "button", class: "small", "data-browse": f.key, onclick: () => pick(mode, (path) => {
    const cur = el.value.trim();
    el.value = mode === "file" && cur ? `${cur}\n${path}` : path;
    el.dispatchEvent(new Event("input"));
  }) }, t("browse"));
}

function fieldRow(f, st) {
  const el = widget(f, st);
  const short = f.key.includes(".") ? f.key.slice(f.key.indexOf(".") + 1) : f.key;
  const changed = (st.values[f.key] ?? "").trim() !== (f.default_text ?? "").trim();
  return h("div", { class: "field" + (changed ? " changed" : ""), "data-key": f.key },
    h("label", { for: el.id }, h("code", null, short), h("span", { class: "type" }, f.type),
      f.required ? h("span", { class: "req" }, t("required")) : null),
    h("div", { class: "control" }, el, browseButton(f, st, el)),
    h("div", { class: "help" }, f.doc, f.required ? null : h("span", { class: "default" },
      ` ${t("default")}: ${f.default_text === "" ? "null" : f.default_text}`)),
    h("div", { class: "err", "data-err": f.key }));
}

function sectionBox(name, fields, st, open) {
  return h("details", { class: "section", open: open ? "open" : null, "data-section": name },
    h("summary", null, t("sec_" + name)), fields.filter((f) => f.section === name).map((f) => fieldRow(f, st)));
}

function showFieldErrors(root, errors) {
  root.querySelectorAll("[data-err]").forEach((e) => { e.textContent = ""; });
  const loose = [];
  for (const e of errors) {
    const slot = e.key && root.querySelector(`[data-err="${CSS.escape(e.key)}"]`);
    if (slot) {
      slot.textContent = e.message;
      slot.closest("details")?.setAttribute("open", "open");
    } else loose.push(e.message);
  }
  return loose;
}

// -- data check and length statistics -----------------------------------------------------------

function sourceLines(text) {
  return (text || "").split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
    if (!l.startsWith("{")) return { path: l };
    const path = /path:\s*([^,}]+)/.exec(l);
    const format = /format:\s*([^,}]+)/.exec(l);
    return { path: path ? path[1].trim() : l, format: format ? format[1].trim() : null };
  });
}

async function checkData(st, out) {
  const files = [];
  for (const split of ["train", "val", "test"]) {
    for (const src of sourceLines(st.values[`data.${split}`])) files.push({ split, path: src.path, format: src.format || null });
  }
  clear(out);
  if (!files.length) {
    out.append(h("p", { class: "error" }, t("need_train")));
    return;
  }
  out.append(h("p", { class: "muted" }, t("checking")));
  let res;
  try {
    res = await post("/data/check", { files });
  } catch (e) {
    fill(out, h("p", { class: "error", id: "data-error" }, e.message));
    return;
  }
  fill(out, h("h3", null, t("data_check")), checkTable(res));
  const stats = h("div", { id: "stats" }, h("p", { class: "muted" }, t("stats_loading")));
  out.append(stats);
  const train = files.filter((f) => f.split === "train").map((f) => f.path);
  try {
    const cutoff = parseInt(st.values["data.cutoff_len"], 10);
    const s = await post("/data/stats", { files: train, model: st.values["model.name_or_path"] || "smollm2-135m-instruct",
      template: st.values.template || null, cutoff: Number.isFinite(cutoff) && cutoff > 0 ? cutoff : null });
    fill(stats, statsView(s, st));
  } catch (e) {
    fill(stats, h("p", { class: "error" }, e.message));
  }
}

function checkTable(res) {
  const rows = res.files.map((f) => [f.split, h("code", null, f.path), f.error ? h("span", { class: "error" }, f.error) : f.format,
    fmt(f.total), fmt(f.valid), f.rejected ? h("span", { class: "bad" }, fmt(f.rejected)) : "0"]);
  const box = h("div", { id: "check-result" },
    table([t("split"), t("file"), t("format"), t("rows"), t("valid"), t("rejected")], rows, { num: [3, 4, 5] }));
  const rejects = res.files.flatMap((f) => f.rejects || []);
  if (rejects.length) {
    box.append(h("details", { class: "rejects" }, h("summary", null, t("rejects_shown", { n: rejects.length })),
      table([t("where"), t("reason")], rejects.map((r) => [`${r.file}:${r.line}`, r.reason]))));
  }
  return box;
}

function statsView(s, st) {
  const tok = s.tokens;
  const cols = ["mean", "p50", "p90", "p95", "p99", "max"];
  const rec = s.recommended_cutoff;
  const useBtn = (v, label) => h("button", { type: "button", class: "small", "data-cutoff": v, onclick: () => {
    st.values["data.cutoff_len"] = String(v);
    const el = document.getElementById(fieldId("data.cutoff_len"));
    if (el) {
      el.value = String(v);
      el.dispatchEvent(new Event("input"));
    }
  } }, `${label}: ${v}`);
  const marks = rec.p95 === rec.p99 ? [{ x: rec.p95, label: `p95 = p99 = ${rec.p95}` }]
    : [{ x: rec.p95, label: `p95 ${rec.p95}` }, { x: rec.p99, label: `p99 ${rec.p99}`, color: "#9333ea" }];
  const cdf = (s.cdf_total || []).map(([x, y]) => [x, y * 100]);
  return h("div", { class: "stats" },
    h("h3", null, t("lengths", { n: s.rendered })),
    table(["", ...cols], ["prompt", "response", "total"].map((k) => [t("tok_" + k), ...cols.map((c) => fmt(tok[k][c]))]),
      { num: [1, 2, 3, 4, 5, 6] }),
    h("p", { class: "recommend" }, t("recommended"), " ", h("b", { id: "rec-cutoff" }, String(rec.p95)),
      ` (${t("covers", { p: 95 })}), ${rec.p99} (${t("covers", { p: 99 })}) `, useBtn(rec.p95, t("use")), " ",
      useBtn(rec.p99, t("use"))),
    table([t("cutoff"), t("rows_cut"), t("resp_cut")], s.cut.map((c) => [fmt(c.cutoff),
      `${(c.rows_cut * 100).toFixed(1)}%`, `${(c.response_tokens_cut * 100).toFixed(1)}%`]), { num: [0, 1, 2] }),
    h("div", { class: "charts2" },
      histogram({ edges: s.histogram.edges, counts: s.histogram.counts, title: t("hist_title"), xlabel: t("tokens"),
        ylabel: t("rows"), vlines: marks }),
      lineChart({ series: [{ name: t("share_rows"), points: cdf }], title: "CDF", xlabel: t("tokens"), ylabel: "%",
        vlines: marks })),
    s.render_rejects?.length ? h("p", { class: "error" }, t("render_rejects", { n: s.render_rejects.length })) : null);
}

// -- check and start ----------------------------------------------------------------------------------

function estimateView(est) {
  const parts = Object.entries(est.breakdown).filter(([, v]) => Math.abs(v) >= 0.005);
  const verdict = est.fits ? h("span", { class: "good" }, t("fits")) : h("span", { class: "bad" }, t("not_fits"));
  return h("div", { id: "estimate" },
    h("h3", null, t("estimate")),
    h("p", null, h("b", { class: "big" }, `${est.total_gb.toFixed(2)} GB`), ` / ${est.device.memory_gb.toFixed(1)} GB `,
      `(${est.device.name}) `, verdict),
    est.cheapest_fix ? h("p", null, t("cheapest_fix"), " ", h("code", null, est.cheapest_fix.change),
      ` → ${est.cheapest_fix.total_gb.toFixed(2)} GB`) : null,
    table([t("term"), "GB", t("what")], parts.map(([k, v]) => [h("code", null, k), v.toFixed(3), est.explain?.[k] || ""]),
      { num: [1] }),
    h("p", null, t("time_line", { s: fmt(est.step_seconds), steps: fmt(est.steps), hours: fmt(est.est_hours),
      basis: est.time_basis })),
    est.recommendations?.length ? table([t("what"), t("value"), t("why")],
      est.recommendations.map((r) => [r.what, String(r.value), r.why])) : null);
}

async function currentYaml(st, root) {
  if (st.tab === "yaml") return st.yaml;
  const res = await post("/config/from_form", { values: st.values });
  const loose = showFieldErrors(root, res.errors);
  st.yaml = res.yaml;
  if (res.errors.length) throw new Error(t("form_errors") + (loose.length ? " " + loose.join("; ") : ""));
  return res.yaml;
}

async function checkConfig(st, root, out, estimate = true) {
  fill(out, h("p", { class: "muted" }, estimate ? t("estimating") : t("checking")));
  try {
    const yaml = await currentYaml(st, root);
    const res = await post("/config/check", { yaml, estimate });
    fill(out, 
      res.exists ? h("p", { class: "error" }, t("exists", { name: res.name })) : null,
      res.notes.map((n) => h("p", { class: "note" }, n)),
      h("h3", null, t("will_run")),
      h("pre", { class: "cmd", id: "run-command" }, res.command),
      h("pre", { class: "yaml", id: "run-yaml" }, res.run_yaml),
      h("button", { type: "button", class: "small", onclick: () => download(`${res.name}.yaml`, res.run_yaml) }, t("download_yaml")),
      res.estimate ? estimateView(res.estimate) : null);
    return { yaml, res };
  } catch (e) {
    fill(out, h("pre", { class: "error", id: "config-error" }, e.message));
    return null;
  }
}

async function start(st, root, out) {
  const ok = await checkConfig(st, root, out, false);
  if (!ok) return;
  try {
    const r = await post("/runs", { yaml: ok.yaml });
    location.hash = `#/run/${encodeURIComponent(r.name)}`;
  } catch (e) {
    out.prepend(h("pre", { class: "error", id: "start-error" }, e.message));
  }
}

// -- the page -----------------------------------------------------------------------------------------

async function switchTab(st, root, tab, parts) {
  const msg = parts.tabMsg;
  clear(msg);
  if (tab === st.tab) return;
  try {
    if (tab === "yaml") {
      const res = await post("/config/from_form", { values: st.values });
      showFieldErrors(root, res.errors);
      st.yaml = res.yaml;
      parts.editor.value = res.yaml;
    } else {
      const res = await post("/config/to_form", { yaml: parts.editor.value });
      if (res.errors.length) {
        msg.append(h("pre", { class: "error" }, res.errors.map((e) => e.message).join("\n")));
        return;
      }
      st.values = res.values;
      drawForm(st, root, parts);
    }
  } catch (e) {
    msg.append(h("pre", { class: "error" }, e.message));
    return;
  }
  showTab(st, parts, tab);
}

function showTab(st, parts, tab) {
  st.tab = tab;
  if (tab === "yaml") parts.editor.value = st.yaml;
  parts.formPane.hidden = tab !== "form";
  parts.yamlPane.hidden = tab !== "yaml";
  parts.tabs.querySelectorAll("button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
}

function drawForm(st, root, parts) {
  const first = st.schema.sections.filter((s) => FIRST.includes(s));
  const rest = st.schema.sections.filter((s) => !FIRST.includes(s));
  fill(parts.firstFields, first.map((s) => sectionBox(s, st.schema.fields, st, true)));
  fill(parts.restFields, rest.map((s) => sectionBox(s, st.schema.fields, st, s !== "eval")));
}

export function renderNew(page) {
  const root = h("div", { class: "new-run" });
  page.append(h("h1", null, t("new_title")), h("p", { class: "muted" }, t("new_intro")), root);
  const parts = {
    tabs: h("div", { class: "tabs" }),
    tabMsg: h("div"),
    firstFields: h("div"),
    restFields: h("div"),
    editor: h("textarea", { id: "yaml-editor", rows: 24, spellcheck: "false" }),
  };
  const dataOut = h("div", { id: "data-result" });
  const checkOut = h("div", { id: "check-out" });
  parts.formPane = h("div", null,
    h("section", { class: "card" }, h("h2", null, t("card_data")), parts.firstFields,
      h("div", { class: "row" }, h("button", { type: "button", id: "check-data", onclick: () => checkData(st, dataOut) }, t("check_data"))),
      dataOut),
    h("section", { class: "card" }, h("h2", null, t("card_train")), parts.restFields));
  parts.yamlPane = h("section", { class: "card", hidden: true }, h("h2", null, "YAML"),
    h("p", { class: "muted" }, t("yaml_help")), parts.editor);
  for (const tab of ["form", "yaml"]) {
    parts.tabs.append(h("button", { type: "button", class: tab === "form" ? "active" : null, "data-tab": tab,
      onclick: () => switchTab(st, root, tab, parts) }, t("tab_" + tab)));
  }
  const st = saved || { schema: null, values: {}, tab: "form", yaml: "" };
  saved = st;
  parts.editor.addEventListener("input", () => { st.yaml = parts.editor.value; });
  append(root, [parts.tabs, parts.tabMsg, parts.formPane, parts.yamlPane,
    h("section", { class: "card" }, h("h2", null, t("card_start")),
      h("div", { class: "row" },
        h("button", { type: "button", id: "check-config", onclick: () => checkConfig(st, root, checkOut) }, t("check_config")),
        h("button", { type: "button", id: "start", class: "primary", onclick: () => start(st, root, checkOut) }, t("start"))),
      checkOut)]);
  const init = async () => {
    if (!st.schema) {
      st.schema = await api("/config/schema");
      for (const f of st.schema.fields) st.values[f.key] = f.default_text ?? "";
    }
    drawForm(st, root, parts);
    if (st.tab === "yaml") showTab(st, parts, "yaml");
  };
  init().catch((e) => root.prepend(h("p", { class: "error" }, e.message)));
  return null;
}

