"""``sft export``: a run folder -> one standalone Hugging Face model folder.

LoRA runs: the adapter is merged into the base weights (``merge_and_unload``);
full fine-tuning runs: ``model/`` is copied (or re-saved in another dtype). Either
way the folder gets safetensors, config, tokenizer, the chat template used in
training, a ``generation_config.json`` whose ``eos_token_id`` covers the
template's end-of-turn tokens, and a model card (README.md).

Chat template: a run trained with the tokenizer's own template keeps it; a
Jinja file is embedded as is; a JSON template (shipped or user) is rendered into
an equivalent Jinja ``chat_template`` that is checked against the JSON renderer
on probe conversations (``verify``), and the JSON file is saved beside as
``sftkit_template.json`` either way. If even plain chats do not render
identically, no Jinja template is claimed: the card says to use the JSON file.

The export is written to a hidden folder next to ``--out``, verified there
(merged vs base+adapter logits in fp32; the folder loads with plain
``AutoModelForCausalLM.from_pretrained``), and only then renamed into place.

``--out`` never overlaps what the export reads: it may not be, lie inside, or contain
the run folder or the base model folder (real paths, symlinks resolved). An existing
``--out`` (and ``OUT.unverified``) is replaced only when it is empty or an earlier
export, recognised by its model card (``is_export``), and only with ``--force``; any
other folder is refused and left as it was (``sftkit.core.safepaths``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.core.errors import ExportError
from sftkit.core.rundir import RunDir
from sftkit.core.safepaths import check_replaceable_dir, refuse_overlap, replace_dir
from sftkit.hub.device import InferenceDevice
from sftkit.hub.models import ResolvedModel, inference_device, load_model, load_tokenizer, resolve
from sftkit.hub.safety import check_adapter
from sftkit.templates.json_template import JSONTemplate
from sftkit.templates.registry import load_template
from sftkit.templates.to_jinja import json_to_jinja, verify

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}
TOLERANCE = 1e-4  # max |logit difference| accepted between merged and base+adapter, in fp32
TEMPLATE_FILE = "sftkit_template.json"
_PROBE_TEXTS = ["Hello, how are you?", "The capital of France is", "def add(a, b):\n    return"]




@dataclass(slots=True)
class RunInfo:
    run_dir: Path
    base: Path  # the base model folder
    weights: Path  # adapter/ (LoRA) or model/ (full fine-tuning)
    kind: str  # "lora" or "full"
    template: str | None  # the run's template reference (None: the tokenizer's own)
    config: dict[str, Any]
    merged: tuple[Path, ...] = ()  # a parent run's adapters merged into the base first (method.merge_base)


@dataclass(slots=True)
class ExportResult:
    out: Path
    kind: str
    dtype: str
    template_note: str
    eos_token_ids: list[int]
    merge_diff: float | None  # merged vs base+adapter, fp32 (LoRA only)
    reload_diff: float  # the written folder (plain from_pretrained) vs the reference, fp32
    reload_checked: bool  # whether reload_diff is held to TOLERANCE (fp32 exports only)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        merge_ok = self.merge_diff is None or self.merge_diff < TOLERANCE
        return merge_ok and (self.reload_diff < TOLERANCE or not self.reload_checked)


def read_run(run: Path) -> RunInfo:
    rd = RunDir(run)
    if not rd.config.is_file():
        raise ExportError(f"{run}: not a run folder (no config.yaml); export needs the folder `sft train` wrote")
    found = rd.weights()
    if found is None:
        raise ExportError(f"{run}: no adapter/ or model/ folder (training did not finish?); nothing to export")
    weights, kind = found
    if kind != "lora":
        return RunInfo(rd.path, weights, weights.resolve(), kind, rd.template(), rd.raw_config())
    res = resolve(str(rd.path))  # the base, and a parent run's adapters merged under this one
    return RunInfo(rd.path, res.path, weights.resolve(), kind, rd.template(), rd.raw_config(), res.merged)


# -- logits checks -------------------------------------------------------------------


def _probe_batch(tokenizer: Any) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in _PROBE_TEXTS]


def _logits(model: Any, batch: list[list[int]]) -> list[Any]:
    import torch

    dev = model.get_input_embeddings().weight.device
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids], device=dev)).logits[0].float().cpu() for ids in batch]


def _max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# -- tokenizer, template, generation config ---------------------------------------


def _template_files(info: RunInfo, tokenizer: Any, tmp: Path) -> tuple[str, list[str]]:
    """Put the training template into the tokenizer (and beside it); returns a
    note for the card and the template's stop strings."""

    tpl = load_template(info.template, tokenizer)
    stops = list(tpl.stop_strings)
    if isinstance(tpl, JSONTemplate):
        (tmp / TEMPLATE_FILE).write_text(json.dumps(tpl.spec.model_dump(exclude_defaults=True), indent=2,
                                                    ensure_ascii=False) + "\n", encoding="utf-8")
        jinja = json_to_jinja(tpl)
        check = verify(tpl, jinja, tokenizer)
        if not check.basic_ok:
            return (f"JSON template {tpl.name!r}: could not be expressed in Jinja (probes failed: "
                    f"{', '.join(check.failed)}); the tokenizer's template was left unchanged: render prompts "
                    f"with `template: {TEMPLATE_FILE}` (sftkit) instead"), stops
        tokenizer.chat_template = jinja
        note = f"JSON template {tpl.name!r} rendered to Jinja; identical on: {', '.join(check.passed)}"
        if check.failed:
            note += f"; DIFFERS on: {', '.join(check.failed)} (use {TEMPLATE_FILE} for those)"
        if check.skipped:
            note += f"; not applicable: {', '.join(check.skipped)}"
        return note + f". Source JSON saved as {TEMPLATE_FILE}.", stops
    if tpl.name != "tokenizer":  # a .jinja file given as `template:`
        tokenizer.chat_template = tpl.tokenizer.chat_template  # type: ignore[attr-defined]
        return f"Jinja template {tpl.name} (embedded as the tokenizer's chat_template)", stops
    return "the base tokenizer's own chat template (unchanged)", stops


def _stop_ids(tokenizer: Any, stops: list[str]) -> list[int]:
    ids: set[int] = set()
    eos = tokenizer.eos_token_id
    for e in eos if isinstance(eos, list) else [eos]:
        if e is not None:
            ids.add(int(e))
    for s in stops:
        enc = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(enc) == 1:
            ids.add(int(enc[0]))
    return sorted(ids)


def _set_eos(tokenizer: Any, stops: list[str]) -> None:
    """Make the tokenizer's eos the template's first end-of-turn token, so tools that
    only know ``eos_token`` (and sftkit's own Jinja path) stop where training ended turns."""
    for s in stops:
        enc = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(enc) == 1:
            if tokenizer.eos_token != s:
                tokenizer.eos_token = s
            return


def _generation_config(model: Any, tokenizer: Any, eos_ids: list[int]) -> None:
    gc = model.generation_config
    gc.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if tokenizer.pad_token_id is not None:
        gc.pad_token_id = tokenizer.pad_token_id


# -- model card -------------------------------------------------------------------


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def model_card(info: RunInfo, res: ExportResult, name: str) -> str:
    summary = _read_json(info.run_dir / "train_summary.json") or {}
    ev = _read_json(info.run_dir / "eval.json") or {}
    method = (info.config.get("method") or {}).get("type", info.kind)
    base_ref = (info.config.get("model") or {}).get("name_or_path", "?")
    lines = ["---", "library_name: transformers", f"base_model: {base_ref}", "tags:", "- sftkit", f"- {method}",
             "---", "", f"# {name}", "",
             f"Fine-tuned from `{base_ref}` with sftkit ({method}); "
             + ("LoRA adapter merged into the base weights." if info.kind == "lora" else "full fine-tuning."),
             f"Weights dtype: {res.dtype}. Exported from run folder `{info.run_dir.name}`.", "",
             "## Training", "", "| key | value |", "|---|---|"]
    for k in ("global_step", "train_loss", "best_eval_loss", "train_seconds", "trainable_parameters",
              "total_parameters"):
        if summary.get(k) is not None:
            lines.append(f"| {k} | {summary[k]} |")
    data = (info.config.get("data") or {}).get("train") or []
    if data:
        lines.append(f"| train data | {', '.join(Path(str(d.get('path', '?'))).name for d in data)} |")
    if ev:
        lines += ["", "## Evaluation", "", "| metric | model | baseline |", "|---|---|---|"]
        model_m, base_m = ev.get("model") or {}, ev.get("baseline") or {}
        for k, v in model_m.items():
            if isinstance(v, int | float):
                b = base_m.get(k)
                lines.append(f"| {k} | {v:.4g} | {f'{b:.4g}' if isinstance(b, int | float) else ''} |")
    lines += ["", "## Chat template", "", res.template_note, "",
              f"`generation_config.json` stops on token ids {res.eos_token_ids}.", "",
              "## Verification", ""]
    if res.merge_diff is not None:
        lines.append(f"- merged vs base+adapter, fp32: max |logit diff| = {res.merge_diff:.2e} (< {TOLERANCE:g})")
    lines.append(f"- this folder reloaded with `AutoModelForCausalLM.from_pretrained`: max |logit diff| = "
                 f"{res.reload_diff:.2e} vs the reference" + ("" if res.reload_checked else f" ({res.dtype} rounding)"))
    lines += ["", "## Use", "", "```bash", f"sft chat {name}", f"sft serve {name}  # OpenAI-compatible API",
              "```", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f'tok = AutoTokenizer.from_pretrained("{name}")',
              f'model = AutoModelForCausalLM.from_pretrained("{name}")',
              'ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,',
              '                              return_tensors="pt", return_dict=True)',
              "out = model.generate(**ids, max_new_tokens=64)", "```", ""]
    return "\n".join(lines)


# -- export ----------------------------------------------------------------------


def _default_dtype(info: RunInfo) -> str:
    d = str((info.config.get("model") or {}).get("dtype") or "float32")
    return DTYPES.get(d, d if d in DTYPES.values() else "float32")


def check_device(info: RunInfo, spec: str, log: Any) -> InferenceDevice:
    """Where the merge and its logit check run: the device rule in float32 (the check's tolerance is
    an fp32 one). Weights that would not fit on the one card there is are checked on the CPU."""
    dev = inference_device(ResolvedModel(str(info.base), info.base), spec, "float32")
    if not dev.fits:
        log(f"{dev.describe()}: merging and checking on the CPU instead")
        return InferenceDevice("cpu", "float32", note="float32 weights do not fit on the card")
    return dev


def _load_merged(info: RunInfo, batch: list[list[int]], log: Any,
                 dev: InferenceDevice) -> tuple[Any, list[Any], float | None]:
    """The model to export in float32 on ``dev``, the reference logits (base+adapter, or the
    trained model) and, for LoRA, the merged-vs-unmerged logit difference."""
    log(f"loading {info.kind} run {info.run_dir.name} (base {info.base.name}) in float32 on {dev.describe()} ...")
    model = load_model(ResolvedModel(str(info.base), info.base, merged=info.merged), device=dev)  # parents merged
    if info.kind != "lora":
        return model, _logits(model, batch), None
    from peft import PeftModel


    check_adapter(info.weights)
    model = PeftModel.from_pretrained(model, info.weights).eval()
    reference = _logits(model, batch)
    model = model.merge_and_unload()
    merge_diff = _max_diff(reference, _logits(model, batch))
    log(f"merged adapter: max |logit diff| merged vs base+adapter (fp32) = {merge_diff:.2e}")
    return model, reference, merge_diff


def _unverified(out: Path) -> Path:
    return out.with_name(out.name + ".unverified")


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an earlier ``sft export`` output: config.json and the
    model card ``model_card`` writes (its front matter tags it ``sftkit``)."""
    try:
        card = (folder / "README.md").read_text(encoding="utf-8")[:2000]
    except (OSError, UnicodeDecodeError):
        return False
    front = card.split("\n---\n", 1)[0]
    return (folder / "config.json").is_file() and front.startswith("---\nlibrary_name: transformers\n") \
        and "\n- sftkit\n" in front


def check_out(info: RunInfo, out: Path, force: bool) -> None:
    """Refuse an ``out`` that overlaps the run or its base model, or that holds anything
    but an earlier export (``RefusedPath``, before any work; see the module docstring)."""
    protected = {"run folder": info.run_dir, "base model folder": info.base}
    refuse_overlap(out, protected)
    refuse_overlap(_unverified(out), protected, flag="the folder for an unverified export,")
    check_replaceable_dir(out, is_export, force, "sft export")
    # OUT.unverified is only ever sft export's own (a failed verification): replaced without --force.
    check_replaceable_dir(_unverified(out), is_export, True, "sft export",
                          flag="the folder for an unverified export,")


def export_run(run: Path, out: Path, dtype: str | None = None, force: bool = False,
               log: Any = print, device: str = "auto") -> ExportResult:
    """Write the standalone folder ``out`` for ``run``; see the module docstring. ``device``: where the
    merge and the logit checks run (``sftkit.hub.device``; always float32)."""
    info = read_run(run)
    dt = DTYPES.get(dtype, "") if dtype else _default_dtype(info)
    if not dt:
        raise ExportError(f"--dtype {dtype}: use one of bf16, fp16, fp32")
    check_out(info, out, force)
    dev = check_device(info, device, log)

    import torch


    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok_src = info.weights if (info.weights / "tokenizer_config.json").is_file() else info.base
        tokenizer = load_tokenizer(tok_src)
        batch = _probe_batch(tokenizer)
        model, reference, merge_diff = _load_merged(info, batch, log, dev)
        template_note, stops = _template_files(info, tokenizer, tmp)
        eos_ids = _stop_ids(tokenizer, stops)  # before _set_eos: the original eos stays a stop too
        multi = [x for x in stops if len(tokenizer(x, add_special_tokens=False)["input_ids"]) != 1]
        if multi:
            # generation_config can only stop on token ids; say which stops need string matching.
            template_note += (f" Stop strings that are not single tokens in this vocabulary (use them as `stop` "
                              f"strings, as sft chat/serve do): {', '.join(map(repr, multi))}.")
        _set_eos(tokenizer, stops)
        _generation_config(model, tokenizer, eos_ids)
        model = model.to(getattr(torch, dt))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
        reloaded = load_model(ResolvedModel(str(tmp), tmp), device=dev)  # plain from_pretrained, float32
        reload_diff = _max_diff(reference, _logits(reloaded, batch))
        del reloaded
        log(f"reloaded {out.name} with plain AutoModelForCausalLM.from_pretrained: max |logit diff| = "
            f"{reload_diff:.2e}" + ("" if dt == "float32" else f" ({dt} rounding, not held to {TOLERANCE:g})"))
        res = ExportResult(out, info.kind, dt, template_note, eos_ids, merge_diff, reload_diff, dt == "float32")
        (tmp / "README.md").write_text(model_card(info, res, out.name), encoding="utf-8")
        res.out = out if res.ok else _unverified(out)
        check_out(info, out, force)  # again: the folders may have changed during the export
        replace_dir(tmp, res.out)  # the folder appears complete and verified, or not at all
        return res
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- GGUF ------------------------------------------------------------------------
