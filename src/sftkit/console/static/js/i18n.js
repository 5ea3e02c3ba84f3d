// English and Chinese labels. The language follows the browser until switched in the header.
// Field help texts come from the config schema (English), as `sft train --help` shows them.

const EN = {
  nav_new: "New run", nav_runs: "Runs", nav_compare: "Compare", nav_chat: "Chat",
  loading: "Loading…", runs_folder: "runs folder", base_folder: "relative paths from",
  token_title: "Access token", token_placeholder: "token",
  token_help: "This console needs the access token `sft console` printed (the URL it printed carries it).",
  token_go: "Open",
  ago_s: "{n}s ago", ago_m: "{n} min ago", ago_h: "{n} h ago",
  new_title: "New run",
  new_intro: "Pick a model and data, check the data, adjust the config, see the memory estimate, then start. "
    + "The run trains exactly as `sft train` with the YAML shown below.",
  card_data: "1 · Model and data", card_train: "2 · Method, training and evaluation", card_start: "3 · Check and start",
  tab_form: "Form", tab_yaml: "YAML",
  yaml_help: "The same YAML `sft train` takes. Relative paths are read from the folder the console was started in.",
  sec_run: "Run", sec_model: "Model", sec_data: "Data", sec_method: "Method", sec_train: "Training", sec_eval: "Evaluation",
  required: "required", default: "default", browse: "Browse…",
  sources_placeholder: "one file per line (or {path: …, format: …})",
  check_data: "Check data", checking: "Checking…", need_train: "Give at least one data.train file first.",
  data_check: "Data check", split: "split", file: "file", format: "format", rows: "rows", valid: "valid",
  rejected: "rejected", rejects_shown: "{n} rejected rows (file:line and reason)", where: "where", reason: "reason",
  stats_loading: "Measuring token lengths with the model's tokenizer and template…",
  lengths: "Tokens per row ({n} rows, with the training template)",
  tok_prompt: "prompt", tok_response: "response (trained)", tok_total: "total",
  recommended: "Recommended data.cutoff_len:", covers: "{p}% of rows fit", use: "use",
  cutoff: "cutoff", rows_cut: "rows cut", resp_cut: "response tokens cut",
  hist_title: "Token lengths", tokens: "tokens", share_rows: "share of rows",
  render_rejects: "{n} rows cannot be rendered with this template (see the data check).",
  check_config: "Check config and estimate", start: "Start training", estimating: "Checking and estimating…",
  form_errors: "Some fields are not valid (see the red notes).", exists: "A run named {name} already exists: change `name`.",
  will_run: "What Start runs", download_yaml: "Download YAML",
  estimate: "Memory estimate", fits: "fits", not_fits: "does NOT fit", cheapest_fix: "Cheapest fix:",
  term: "term", what: "what", value: "value", why: "why",
  time_line: "{s} s/step × {steps} steps ≈ {hours} h ({basis})",
  runs_title: "Runs", compare_selected: "Compare selected", no_runs: "No runs in {dir} yet.",
  name: "name", status: "status", step: "step", steps: "steps", loss: "loss", eval_loss: "val loss",
  tok_s: "tokens/s", model: "model", method: "method", updated: "updated",
  st_running: "running", st_finished: "finished", st_failed: "failed", st_stopped: "stopped",
  st_incomplete: "incomplete",
  stage_starting: "starting", stage_train: "training", stage_eval: "evaluating", stage_report: "report",
  curves: "Curves", log: "Log", train_loss: "train loss", val_loss: "validation loss", val: "val",
  throughput: "Throughput", lr: "Learning rate", no_metrics: "no metrics yet",
  best_eval: "best val loss", seconds: "train seconds",
  stop: "Stop", force_stop: "Force stop (kill)", resume: "Resume", evaluate: "Evaluate and report",
  chat_with: "Chat with it", open_report: "Open report", clone: "New run from this config",
  results: "Before and after", metric: "metric", before: "base (before)", after: "tuned (after)", delta: "delta",
  eval_line: "{n} held-out examples from {data}", flips_up: "{n} wrong → right", flips_down: "{n} right → wrong",
  report: "Report", config: "Config", files: "Files",
  compare_title: "Compare runs", compare_pick: "Pick two or more runs:", compare: "Compare",
  metrics: "Results", metrics_help: "Evaluation metrics of the tuned model, with the change against its base in brackets.",
  config_diff: "Config: {n} keys differ", show_all_keys: "show every key", key: "key",
  chat_title: "Chat",
  chat_intro: "Talk to a run or an exported model; its base model answers the same prompt beside it.",
  talk_to: "Talk to", compare_with: "Beside it", other_model: "Other model (path or reference)…",
  model_ref_placeholder: "folder, .gguf file, run folder or smollm2-135m-instruct",
  base_auto: "its base model", base_none: "nothing (one column)",
  max_new_tokens: "max new tokens", temperature: "temperature (0 = greedy)", system_prompt: "System prompt",
  system_placeholder: "optional system prompt", prompt_placeholder: "Your message (Enter sends, Shift+Enter: new line)",
  send: "Send", reset: "Reset", generating: "generating…", tuned: "Tuned", base: "Base",
  pick_model: "Pick a model folder, run or .gguf file", pick_file: "Pick a data file", pick_use: "use",
  kind_run: "run", kind_model: "model",
};

const ZH = {
  nav_new: "新建训练", nav_runs: "训练列表", nav_compare: "对比", nav_chat: "对话",
  loading: "加载中…", runs_folder: "训练目录", base_folder: "相对路径起点",
  token_title: "访问令牌", token_placeholder: "令牌",
  token_help: "此控制台需要 `sft console` 打印的访问令牌（它打印的网址已包含令牌）。", token_go: "打开",
  ago_s: "{n} 秒前", ago_m: "{n} 分钟前", ago_h: "{n} 小时前",
  new_title: "新建训练",
  new_intro: "选择模型和数据，先检查数据，再调整配置、查看显存估算，然后开始。训练与命令行 `sft train` 使用下方显示的 YAML 完全相同。",
  card_data: "1 · 模型与数据", card_train: "2 · 方法、训练与评估", card_start: "3 · 检查并开始",
  tab_form: "表单", tab_yaml: "YAML",
  yaml_help: "与 `sft train` 相同的 YAML。相对路径以启动控制台时所在的目录为起点。",
  sec_run: "运行", sec_model: "模型", sec_data: "数据", sec_method: "方法", sec_train: "训练", sec_eval: "评估",
  required: "必填", default: "默认", browse: "浏览…",
  sources_placeholder: "每行一个文件（或 {path: …, format: …}）",
  check_data: "检查数据", checking: "检查中…", need_train: "请先填写至少一个 data.train 文件。",
  data_check: "数据检查", split: "划分", file: "文件", format: "格式", rows: "行数", valid: "有效",
  rejected: "拒绝", rejects_shown: "{n} 行被拒绝（文件:行号与原因）", where: "位置", reason: "原因",
  stats_loading: "正在用模型的分词器和模板统计 token 长度…",
  lengths: "每行 token 数（{n} 行，按训练模板渲染）",
  tok_prompt: "提示", tok_response: "回复（参与训练）", tok_total: "总计",
  recommended: "推荐的 data.cutoff_len：", covers: "覆盖 {p}% 的行", use: "采用",
  cutoff: "截断长度", rows_cut: "被截断的行", resp_cut: "被截掉的回复 token",
  hist_title: "token 长度分布", tokens: "token 数", share_rows: "行占比",
  render_rejects: "{n} 行无法用此模板渲染（见数据检查）。",
  check_config: "检查配置并估算", start: "开始训练", estimating: "检查并估算中…",
  form_errors: "部分字段无效（见红色提示）。", exists: "已存在名为 {name} 的训练：请修改 `name`。",
  will_run: "开始后将运行", download_yaml: "下载 YAML",
  estimate: "显存估算", fits: "放得下", not_fits: "放不下", cheapest_fix: "最省事的调整：",
  term: "项", what: "说明", value: "值", why: "原因",
  time_line: "{s} 秒/步 × {steps} 步 ≈ {hours} 小时（{basis}）",
  runs_title: "训练列表", compare_selected: "对比所选", no_runs: "{dir} 中还没有训练。",
  name: "名称", status: "状态", step: "步数", steps: "总步数", loss: "损失", eval_loss: "验证损失",
  tok_s: "token/秒", model: "模型", method: "方法", updated: "更新时间",
  st_running: "运行中", st_finished: "已完成", st_failed: "失败", st_stopped: "已停止", st_incomplete: "未完成",
  stage_starting: "启动中", stage_train: "训练中", stage_eval: "评估中", stage_report: "生成报告",
  curves: "曲线", log: "日志", train_loss: "训练损失", val_loss: "验证损失", val: "验证",
  throughput: "吞吐量", lr: "学习率", no_metrics: "暂无指标",
  best_eval: "最佳验证损失", seconds: "训练秒数",
  stop: "停止", force_stop: "强制停止", resume: "继续训练", evaluate: "评估并生成报告",
  chat_with: "与它对话", open_report: "打开报告", clone: "以此配置新建训练",
  results: "微调前后对比", metric: "指标", before: "基座（之前）", after: "微调后", delta: "变化",
  eval_line: "来自 {data} 的 {n} 条留出样本", flips_up: "{n} 条 错 → 对", flips_down: "{n} 条 对 → 错",
  report: "报告", config: "配置", files: "文件",
  compare_title: "对比训练", compare_pick: "选择两个或更多训练：", compare: "对比",
  metrics: "结果", metrics_help: "微调模型的评估指标，括号内为相对基座的变化。",
  config_diff: "配置：{n} 个键不同", show_all_keys: "显示全部键", key: "键",
  chat_title: "对话", chat_intro: "与某次训练或导出的模型对话；基座模型在旁边回答同一个问题。",
  talk_to: "对话对象", compare_with: "对照", other_model: "其他模型（路径或名称）…",
  model_ref_placeholder: "模型目录、.gguf 文件、训练目录或 smollm2-135m-instruct",
  base_auto: "它的基座模型", base_none: "不对照（单栏）",
  max_new_tokens: "最多生成 token 数", temperature: "温度（0 = 贪心）", system_prompt: "系统提示",
  system_placeholder: "可选的系统提示", prompt_placeholder: "输入消息（回车发送，Shift+回车换行）",
  send: "发送", reset: "清空", generating: "生成中…", tuned: "微调模型", base: "基座模型",
  pick_model: "选择模型目录、训练目录或 .gguf 文件", pick_file: "选择数据文件", pick_use: "使用",
  kind_run: "训练", kind_model: "模型",
};

const DICTS = { en: EN, zh: ZH };
let lang = localStorage.getItem("sftkit_lang") || ((navigator.language || "").startsWith("zh") ? "zh" : "en");

export function getLang() {
  return lang;
}

export function setLang(l) {
  lang = DICTS[l] ? l : "en";
  localStorage.setItem("sftkit_lang", lang);
}

export function t(key, vars) {
  let s = DICTS[lang][key] ?? EN[key] ?? key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}
