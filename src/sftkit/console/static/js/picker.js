// The file picker: folders and files on the machine the console runs on (/api/files).

import { api } from "./api.js";
import { clear, h, fill } from "./dom.js";
import { t } from "./i18n.js";

// mode "file": pick a data file; mode "model": pick a model or run folder (or a .gguf file).
export function pick(mode, onPick, startDir) {
  const dlg = document.getElementById("picker");
  const body = h("div", { class: "picker-body" });
  const close = () => dlg.close();
  fill(dlg, 
    h("div", { class: "picker-head" }, h("b", null, t(mode === "model" ? "pick_model" : "pick_file")),
      h("button", { type: "button", class: "ghost", onclick: close }, "✕")),
    body,
  );
  const show = async (dir) => {
    fill(body, h("p", { class: "muted" }, t("loading")));
    let data;
    try {
      data = await api("/files" + (dir ? `?dir=${encodeURIComponent(dir)}` : ""));
    } catch (e) {
      fill(body, h("p", { class: "error" }, e.message));
      return;
    }
    const list = h("ul", { class: "files" });
    if (data.parent) list.append(h("li", null, h("a", { href: "#", onclick: (e) => { e.preventDefault(); show(data.parent); } }, "⬆ ..")));
    // The console reads only its own folders (the one it started in, runs, --allow): jump between them.
    for (const root of data.parent ? [] : (data.roots || []).filter((r) => r !== data.dir)) {
      list.append(h("li", { class: "dir" }, h("a", { href: "#", "data-path": root,
        onclick: (e) => { e.preventDefault(); show(root); } }, `⇢ ${root}`)));
    }
    for (const ent of data.entries) {
      const choose = () => { onPick(ent.path); close(); };
      if (ent.kind === "file") {
        const ok = mode === "file" ? !/\.(ya?ml|gguf)$/.test(ent.name) : /\.gguf$/.test(ent.name);
        list.append(h("li", { class: ok ? "file" : "file dim" }, ok
          ? h("a", { href: "#", "data-path": ent.path, onclick: (e) => { e.preventDefault(); choose(); } }, "📄 " + ent.name)
          : "📄 " + ent.name));
      } else {
        const useBtn = mode === "model" && ent.kind !== "dir"
          ? h("button", { type: "button", class: "small", onclick: choose }, t("pick_use")) : null;
        list.append(h("li", { class: "dir" }, h("a", { href: "#", "data-path": ent.path,
          onclick: (e) => { e.preventDefault(); show(ent.path); } }, `📁 ${ent.name}`),
        ent.kind !== "dir" ? h("span", { class: "tag" }, t("kind_" + ent.kind)) : null, useBtn));
      }
    }
    fill(body, h("div", { class: "muted path" }, data.dir), list);
  };
  show(startDir);
  dlg.showModal();
}
