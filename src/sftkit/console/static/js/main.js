// Router and frame: the header, the language switch, the token prompt, one page at a time.

import { api, setUnauthorisedHandler } from "./api.js";
import { renderChat } from "./page_chat.js";
import { renderCompare } from "./page_compare.js";
import { renderNew } from "./page_new.js";
import { renderRun } from "./page_run.js";
import { renderRuns } from "./page_runs.js";
import { getLang, setLang, t } from "./i18n.js";
import { clear, h } from "./dom.js";

const ROUTES = [
  { path: "new", nav: "nav_new", render: renderNew },
  { path: "runs", nav: "nav_runs", render: renderRuns },
  { path: "run", render: renderRun, navAs: "runs" },
  { path: "compare", nav: "nav_compare", render: renderCompare },
  { path: "chat", nav: "nav_chat", render: renderChat },
];

let cleanup = null;
let locked = false;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [pathPart, query = ""] = raw.split("?");
  const [path, ...rest] = pathPart.split("/");
  return { path: path || "runs", arg: rest.map(decodeURIComponent).join("/"), params: new URLSearchParams(query) };
}

function drawNav(active) {
  const nav = clear(document.getElementById("nav"));
  for (const r of ROUTES.filter((x) => x.nav)) {
    nav.append(h("a", { href: `#/${r.path}`, class: r.path === active ? "active" : null }, t(r.nav)));
  }
  document.getElementById("lang").textContent = getLang() === "zh" ? "English" : "中文";
  document.documentElement.lang = getLang() === "zh" ? "zh-CN" : "en";
}

function route() {
  if (locked) return;
  if (cleanup) cleanup();
  cleanup = null;
  const { path, arg, params } = parseHash();
  const r = ROUTES.find((x) => x.path === path) || ROUTES[1];
  drawNav(r.navAs || r.path);
  const page = clear(document.getElementById("page"));
  try {
    cleanup = r.render(page, { arg, params }) || null;
  } catch (e) {
    page.append(h("p", { class: "error" }, String(e)));
  }
}

function askToken() {
  if (locked) return;
  locked = true;
  if (cleanup) cleanup();
  const input = h("input", { type: "password", id: "token", placeholder: t("token_placeholder"), autocomplete: "off" });
  const go = () => {
    if (input.value.trim()) location.href = "/?token=" + encodeURIComponent(input.value.trim());
  };
  const page = clear(document.getElementById("page"));
  page.append(h("section", { class: "card narrow" },
    h("h2", null, t("token_title")),
    h("p", null, t("token_help")),
    h("div", { class: "row" }, input, h("button", { type: "button", onclick: go }, t("token_go")))));
  input.addEventListener("keydown", (e) => e.key === "Enter" && go());
}

async function footer() {
  try {
    const info = await api("/health");
    const foot = clear(document.getElementById("foot"));
    foot.append(`sftkit ${info.version} · ${t("runs_folder")}: `, h("code", null, info.runs_dir),
      ` · ${t("base_folder")}: `, h("code", null, info.base_dir));
  } catch {
    /* 401 is handled by askToken */
  }
}

setUnauthorisedHandler(askToken);
document.getElementById("lang").addEventListener("click", () => {
  setLang(getLang() === "zh" ? "en" : "zh");
  route();
  footer();
});
window.addEventListener("hashchange", route);
route();
footer();
