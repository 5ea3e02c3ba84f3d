// Chat with a run or a model; the base model answers the same prompt in the next column.

import { api, stream } from "./api.js";
import { clear, h, fill } from "./dom.js";
import { t } from "./i18n.js";
import { pick } from "./picker.js";

const OTHER = "__other__";

function bubble(role, text) {
  return h("div", { class: `msg ${role}` }, h("div", { class: "text" }, text));
}

function targetControls(runs, preset) {
  const target = h("select", { id: "chat-target" },
    runs.map((r) => h("option", { value: "run:" + r.name, selected: r.name === preset ? "selected" : null },
      `${r.name} (${r.method})`)),
    h("option", { value: OTHER }, t("other_model")));
  const otherRef = h("input", { type: "text", id: "chat-model-ref", placeholder: t("model_ref_placeholder"), hidden: true });
  const browse = h("button", { type: "button", class: "small", hidden: true, onclick: () => pick("model", (p) => { otherRef.value = p; }) },
    t("browse"));
  const sync = () => {
    const other = target.value === OTHER;
    otherRef.hidden = !other;
    browse.hidden = !other;
  };
  target.addEventListener("change", sync);
  sync();
  const baseline = h("select", { id: "chat-baseline" }, h("option", { value: "auto" }, t("base_auto")),
    h("option", { value: "none" }, t("base_none")), h("option", { value: OTHER }, t("other_model")));
  const baseRef = h("input", { type: "text", id: "chat-baseline-ref", placeholder: t("model_ref_placeholder"), hidden: true });
  baseline.addEventListener("change", () => { baseRef.hidden = baseline.value !== OTHER; });
  return { target, otherRef, browse, baseline, baseRef };
}

export function renderChat(page, { params }) {
  const body = h("div", { id: "chat" }, h("p", { class: "muted" }, t("loading")));
  page.append(h("h1", null, t("chat_title")), h("p", { class: "muted" }, t("chat_intro")), body);
  let controller = null;
  const init = async () => {
    const { runs } = await api("/chat/targets");
    const c = targetControls(runs, params.get("run"));
    const system = h("textarea", { id: "chat-system", rows: 2, placeholder: t("system_placeholder") });
    const maxTok = h("input", { type: "number", id: "chat-max", value: "128", min: "1", max: "2048" });
    const temp = h("input", { type: "number", id: "chat-temp", value: "0", min: "0", max: "2", step: "0.1" });
    const cols = { model: h("div", { class: "msgs", id: "col-model" }), baseline: h("div", { class: "msgs", id: "col-baseline" }) };
    const heads = { model: h("h3", null, t("tuned")), baseline: h("h3", null, t("base")) };
    const input = h("textarea", { id: "chat-input", rows: 3, placeholder: t("prompt_placeholder") });
    const status = h("div", { class: "muted", id: "chat-status" });
    const send = h("button", { type: "button", id: "chat-send", class: "primary" }, t("send"));
    const reset = h("button", { type: "button", id: "chat-reset" }, t("reset"));
    const history = [];
    const columns = h("div", { class: "chat-cols" },
      h("div", { class: "col", "data-side": "model" }, heads.model, cols.model),
      h("div", { class: "col", "data-side": "baseline" }, heads.baseline, cols.baseline));
    fill(body, 
      h("section", { class: "card" }, h("div", { class: "grid2" },
        h("label", null, t("talk_to"), c.target, c.otherRef, c.browse),
        h("label", null, t("compare_with"), c.baseline, c.baseRef),
        h("label", null, t("max_new_tokens"), maxTok), h("label", null, t("temperature"), temp)),
      h("details", null, h("summary", null, t("system_prompt")), system)),
      columns,
      h("section", { class: "card composer" }, input, h("div", { class: "row" }, send, reset, status)));

    const request = (prompt) => {
      const req = { prompt, history: history.slice(), system: system.value.trim() || null,
        max_new_tokens: parseInt(maxTok.value, 10) || 128, temperature: parseFloat(temp.value) || 0 };
      if (c.target.value === OTHER) req.model = c.otherRef.value.trim();
      else req.run = c.target.value.slice(4);
      req.baseline = c.baseline.value === OTHER ? c.baseRef.value.trim() : c.baseline.value;
      return req;
    };
    const go = async () => {
      const prompt = input.value.trim();
      if (!prompt || controller) return;
      const turn = { user: prompt, model: "", baseline: "" };
      const live = {};
      const req = request(prompt);
      controller = new AbortController();
      send.disabled = true;
      fill(status, t("generating"));
      columns.classList.toggle("single", req.baseline === "none");
      for (const side of ["model", "baseline"]) {
        cols[side].append(bubble("user", prompt));
        live[side] = bubble("assistant", "");
        cols[side].append(live[side]);
      }
      try {
        await stream("/chat", req, (ev) => {
          if (ev.delta !== undefined) {
            turn[ev.side] += ev.delta;
            live[ev.side].querySelector(".text").textContent = turn[ev.side];
          } else if (ev.done) {
            live[ev.side].classList.add("done");
            live[ev.side].append(h("div", { class: "meta" }, `${ev.completion_tokens} ${t("tokens")} · ${ev.seconds}s · ${ev.finish_reason}`));
            heads[ev.side].textContent = `${t(ev.side === "model" ? "tuned" : "base")}: ${ev.ref}`;
          } else if (ev.error) {
            live[ev.side].append(h("div", { class: "error" }, ev.error));
          }
        }, controller.signal);
        history.push(turn);
        input.value = "";
        clear(status);
      } catch (e) {
        fill(status, h("span", { class: "error", id: "chat-error" }, e.message));
        for (const side of ["model", "baseline"]) {
          live[side].remove();
          cols[side].lastChild?.remove();
        }
      } finally {
        controller = null;
        send.disabled = false;
      }
    };
    send.addEventListener("click", go);
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        go();
      }
    });
    reset.addEventListener("click", () => {
      history.length = 0;
      clear(cols.model);
      clear(cols.baseline);
    });
  };
  init().catch((e) => fill(body, h("p", { class: "error" }, e.message)));
  return () => controller?.abort();
}
