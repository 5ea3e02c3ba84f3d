"""``sft eval``: score a model (or a run) on held-out conversations, next to a baseline.

For every example: loss and perplexity on the reference answer (assistant tokens
only, the same labels training used), a greedy generation scored with metrics
that fit the data, and — with a baseline — the same prompts under the same
decoding, so deltas and per-example flips are meaningful. For a run folder the
baseline defaults to its base model: the adapter is switched off on the already
loaded model instead of loading the base a second time.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import AcceleratorUnavailable, DataError, ModelNotFound, RowRejected, UsageError
from sftkit.core.rundir import RunDir
from sftkit.data import load_file
from sftkit.evaluate import metrics as M
from sftkit.evaluate import prefeval
from sftkit.hub.device import check_vllm
from sftkit.hub.models import ResolvedModel, inference_device, load_model, load_tokenizer, resolve
from sftkit.infer import vllm_engine
from sftkit.infer.engine import Engine, GenParams, GenResult, build_renderer
from sftkit.templates.inline import answer_part
from sftkit.templates.render import IGNORE

GENERAL_CHECK = "general_check.jsonl"
NO_BASELINE = ("none", "no", "off", "")
_LOSS_TOKENS_PER_BATCH = 4096  # keeps the (batch, length, vocab) logits small on CPU


@dataclass(slots=True)
class Side:
    """One model as evaluated: an engine plus how to enter its mode (the base
    model of a run is the same weights with the adapter disabled)."""

    name: str
    ref: str
    engine: Engine
    mode: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


# -- loading ------------------------------------------------------------------------------



def _adapter_off(model: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    return model.disable_adapter  # PeftModel: a context manager that bypasses the LoRA layers


def load_sides(model_ref: str, baseline_ref: str | None, dtype: str | None = None, batch_size: int = 16,
               template: str | None = None, device: str = "auto") -> list[Side]:
    """The model and, if any, its baseline (``None``: what a run started from: the base model, or the
    parent run it builds on; ``"none"``: no baseline). ``template`` applies to a plain model (a run
    keeps its own). Both go on the device the rule picks for ``device`` (``sftkit.hub.device``);
    ``dtype`` None: the rule's."""

    resolved = resolve(model_ref)
    tok = load_tokenizer(resolved.path)
    template = (RunDir(resolved.run_dir).template() if resolved.run_dir else template) or None
    dev = inference_device(resolved, device, dtype)
    model = load_model(resolved, device=dev)
    engine = Engine(model, tok, build_renderer(tok, template), batch_size=batch_size, device=dev)
    sides = [Side("model", model_ref, engine)]
    parent = parent_side(resolved, model, engine, device, dtype) if baseline_ref is None else None
    if parent is not None:
        sides.append(parent)
    elif baseline_ref is None and resolved.adapter is not None:
        sides.append(Side("baseline", f"{resolved.path} (base)", engine, _adapter_off(model)))
    elif baseline_ref is not None and baseline_ref.strip().lower() not in NO_BASELINE:
        b = resolve(baseline_ref)
        btok = load_tokenizer(b.path)
        # Same conversations, same template: a plain baseline model is prompted the
        # way the tuned one is (a baseline run keeps its own template).
        btpl = (RunDir(b.run_dir).template() if b.run_dir else template) or None
        bdev = inference_device(b, device, dtype)
        bengine = Engine(load_model(b, device=bdev), btok, build_renderer(btok, btpl), batch_size=batch_size,
                         device=bdev)
        sides.append(Side("baseline", baseline_ref, bengine))
    return sides


def parent_side(resolved: ResolvedModel, model: Any, engine: Engine, device: str,
                dtype: str | None) -> Side | None:
    """The baseline of a run that builds on another run (``train/lineage.py``): that parent run, as
    cheaply as it can be had. None when the run started from a plain model."""
    if resolved.run_dir is None:
        return None
    ref = RunDir(resolved.run_dir).base_model()
    try:
        parent = resolve(ref)
    except ModelNotFound:
        return None
    if parent.run_dir is None and parent.adapter is None:
        return None
    name = f"{ref} (parent run)"
    same_base = parent.path == resolved.path and resolved.adapter is not None
    if same_base and resolved.merged == (*parent.merged, *([parent.adapter] if parent.adapter else [])):
        return Side("baseline", name, engine, _adapter_off(model))  # the parent is this run's base
    if same_base and parent.adapter is not None and resolved.merged == parent.merged:
        model.load_adapter(str(parent.adapter), adapter_name="parent")  # the adapter this run trained further
        return Side("baseline", name, engine, lambda: _use_adapter(model, "parent"))
    tok = load_tokenizer(parent.path)
    template = RunDir(parent.run_dir).template() if parent.run_dir else None
    dev = inference_device(parent, device, dtype)
    return Side("baseline", name, Engine(load_model(parent, device=dev), tok, build_renderer(tok, template),
                                         batch_size=engine.batch_size, device=dev))


@contextlib.contextmanager
def _use_adapter(model: Any, name: str) -> Iterator[None]:
    before = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(before)


def load_eval(path: str | Path, limit: int | None = None) -> tuple[list[Conversation], list[dict[str, str]],
                                                                    list[Any] | None]:
    """``(conversations, skipped, pairs)``: a preference file's pairs (None for SFT data) are scored by
    preference too, and their prompts with the chosen reply by generation."""
    if prefeval.is_preference_file(path):
        pairs, convs, skipped = prefeval.load_pairs(path, limit)
        return convs, skipped, pairs
    convs, skipped = load_test(path, limit)
    return convs, skipped, None


def load_test(path: str | Path, limit: int | None = None) -> tuple[list[Conversation], list[dict[str, str]]]:
    """Conversations that end with an assistant reply (the reference answer), and every row that
    cannot be scored with its reason (``{"source", "reason"}``), so nothing is dropped silently."""

    res = load_file(path)
    skipped = [{"source": f"{r.file}:{r.line}", "reason": r.reason} for r in res.rejects]
    convs = []
    for c in res.conversations:
        if c.is_text or c.final_reply() is None:
            skipped.append({"source": c.source or str(path), "reason": "no final assistant reply to compare with"})
        else:
            convs.append(c)
    if not convs:
        raise DataError(f"{path}: no conversation ending with an assistant reply to evaluate against")
    return (convs[:limit] if limit else convs), skipped


def load_conversations(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """``load_eval`` without the skipped rows and the pairs."""
    return load_eval(path, limit)[0]


def general_check_path() -> Path:
    return Path(str(resources.files("sftkit") / "assets" / GENERAL_CHECK))


# -- loss -------------------------------------------------------------------------------------


def reference_loss(engine: Engine, convs: Sequence[Conversation]) -> dict[str, float]:
    """Token-weighted mean cross-entropy over the assistant tokens of the
    references (the Renderer's labels, as in training) and its perplexity."""
    import torch


    renderer = engine.renderer
    rows = [r for r in renderer.render_many(list(convs)) if not isinstance(r, RowRejected)]
    rows.sort(key=lambda r: len(r.input_ids))
    total, count = 0.0, 0
    dev = engine.input_device()  # where inputs go; the logits come out where the last layer is
    i = 0
    with torch.inference_mode():
        while i < len(rows):
            width = len(rows[i].input_ids)
            j = i + 1
            # Rows are sorted by length, so the last one in the batch sets its width.
            while j < len(rows) and (j - i + 1) * len(rows[j].input_ids) <= _LOSS_TOKENS_PER_BATCH:
                width = len(rows[j].input_ids)
                j += 1
            batch = rows[i:j]
            ids = torch.full((len(batch), width), engine.pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, r in enumerate(batch):
                n = len(r.input_ids)
                ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(r.input_ids), torch.tensor(r.labels), 1
            logits = engine.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
            # Token t is predicted from position t-1.
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total += float(loss)
            count += int((labels[:, 1:] != IGNORE).sum())
            i = j
    mean = total / count if count else float("nan")
    return {"loss": mean, "ppl": math.exp(mean) if count else float("nan"), "loss_tokens": count}


# -- latency -------------------------------------------------------------------------------------


def fit_latency(results: Sequence[GenResult]) -> dict[str, float]:
    """Fit ``t = k * x + b`` (x: generated tokens) by least squares over
    single-request timings: ``b`` is the fixed (prompt/first-token) cost, ``k``
    the time per extra token. Falls back to first-token timing when every
    request produced the same number of tokens (the fit is then undetermined)."""
    xs = [r.completion_tokens for r in results if r.completion_tokens > 0]
    ts = [r.total_s for r in results if r.completion_tokens > 0]
    first = [r.first_token_s for r in results if r.completion_tokens > 0]
    if not xs:
        return {"k_s_per_token": float("nan"), "b_s": float("nan"), "n": 0}
    mx, mt = sum(xs) / len(xs), sum(ts) / len(ts)
    var = sum((x - mx) ** 2 for x in xs)
    if var > 0:
        k = sum((x - mx) * (t - mt) for x, t in zip(xs, ts, strict=True)) / var
        b = mt - k * mx
    else:
        b = sum(first) / len(first)
        k = (mt - b) / max(mx - 1, 1)
    return {
        "k_s_per_token": k,
        "b_s": b,
        "tokens_per_s": 1 / k if k > 0 else float("nan"),
        "first_token_s_mean": sum(first) / len(first),
        "n": len(xs),
    }


def measure_latency(side: Side, prompts: Sequence[str], params: GenParams, samples: int) -> dict[str, float]:
    """Generate a few prompts one at a time (what a chat user waits for) and fit."""
    if samples <= 0 or not prompts:
        return {}
    runs = []
    with side.mode():
        for p in list(prompts)[:samples]:
            runs.extend(side.engine.generate([p], params))
    return fit_latency(runs)


# -- scoring -------------------------------------------------------------------------------------


def _user_text(conv: Conversation) -> str:
    users = [m.content for m in conv.prompt_messages() if m.role == "user"]
    return users[-1] if users else ""


def _is_right(score: float, primary: str) -> bool:
    # Exact/label/JSON scores are 0/1-like; for free text a ROUGE-L F1 of 0.5 counts as right.
    return score >= (0.5 if primary in ("rouge", "bleu") else 1.0 - 1e-9)


@dataclass(slots=True)
class SideRun:
    preds: list[str]
    results: list[GenResult]
    metrics: M.MetricResult
    loss: dict[str, float]
    wall_s: float
    pref: list[tuple[float, float] | None] | None = None  # (log p(chosen), log p(rejected)) per test pair


def metric_names(metrics: Sequence[str] | None, convs: Sequence[Conversation]) -> list[str]:
    """The metrics asked for, or those that fit the references."""
    return [M.canonical(n) for n in metrics] if metrics else M.infer_metrics([c.final_reply() or "" for c in convs])


def run_side(side: Side, convs: Sequence[Conversation], names: Sequence[str], max_new_tokens: int,
             pairs: Sequence[Any] | None = None) -> SideRun:
    """One model on the test conversations, greedy (both sides of a comparison decode identically)."""
    return _run_side(side, convs, names, GenParams(max_new_tokens=max_new_tokens), pairs)


def _run_side(side: Side, convs: Sequence[Conversation], names: Sequence[str], params: GenParams,
              pairs: Sequence[Any] | None = None) -> SideRun:
    refs = [c.final_reply() or "" for c in convs]
    prompts = [side.engine.prompt_for(c) for c in convs]
    with side.mode():
        # --engine vllm has no transformers model to score the references with
        loss = reference_loss(side.engine, convs) if side.engine.model is not None else {"loss": math.nan,
                                                                                          "ppl": math.nan}
        pref = prefeval.pair_logps(side.engine, pairs) if pairs and side.engine.model is not None else None
        t0 = time.perf_counter()
        results = side.engine.generate(prompts, params)
        wall = time.perf_counter() - t0
    preds = [answer_part(r.text).strip() for r in results]  # a CoT reply is scored on its answer
    return SideRun(preds, results, M.compute(names, preds, refs), loss, wall, pref)


def side_scores(run: SideRun) -> dict[str, float]:
    out = dict(run.metrics.scores)
    out["loss"], out["ppl"] = run.loss["loss"], run.loss["ppl"]
    toks = sum(r.completion_tokens for r in run.results)
    out["gen_tokens_per_s"] = toks / run.wall_s if run.wall_s > 0 else float("nan")
    out["mean_completion_tokens"] = toks / len(run.results) if run.results else 0.0
    if run.pref is not None:
        out.update({k: v for k, v in prefeval.side_preference(run.pref).items() if k == "pref_accuracy"})
    return out


def forgetting_check(sides: Sequence[Side], max_new_tokens: int = 32) -> dict[str, Any]:
    """Score the shipped general-ability set before (baseline) and after (model):
    an answer counts when it contains the short reference answer."""
    convs = load_conversations(general_check_path())
    refs = [c.final_reply() or "" for c in convs]
    out: dict[str, Any] = {"n": len(convs), "set": GENERAL_CHECK}
    for side in sides:
        with side.mode():
            res = side.engine.generate([side.engine.prompt_for(c) for c in convs], GenParams(max_new_tokens))
        hits = [M.contains_answer(r.text, ref) for r, ref in zip(res, refs, strict=True)]
        out[side.name] = sum(hits) / len(hits)
    if "baseline" in out:
        out["delta"] = out["model"] - out["baseline"]
    return out


def _flips(convs: Sequence[Conversation], a: SideRun, b: SideRun) -> list[dict[str, Any]]:
    primary = a.metrics.primary
    out = []
    for i, c in enumerate(convs):
        ra, rb = _is_right(a.metrics.per_example[i], primary), _is_right(b.metrics.per_example[i], primary)
        if ra == rb:
            continue
        out.append(
            {
                "i": i,
                "source": c.source,
                "direction": "wrong_to_right" if ra else "right_to_wrong",
                "prompt": _user_text(c),
                "reference": c.final_reply(),
                "model": a.preds[i],
                "baseline": b.preds[i],
            }
        )
    return out


def evaluate_sides(
    sides: Sequence[Side],
    convs: Sequence[Conversation],
    metrics: Sequence[str] | None = None,
    *,
    max_new_tokens: int = 128,
    forgetting: bool = True,
    latency_samples: int = 4,
    done: Mapping[str, SideRun] | None = None,
    pairs: Sequence[Any] | None = None,
    beta: float = 0.1,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The evaluation on already loaded models: (result dict, prediction rows). ``done`` holds sides
    already scored on the same conversations and metrics (the pipeline's baseline-first step).
    ``pairs``: the preference pairs behind ``convs`` (``prefeval``), scored with ``beta``."""
    refs = [c.final_reply() or "" for c in convs]
    names = metric_names(metrics, convs)
    params = GenParams(max_new_tokens=max_new_tokens)  # greedy: both sides decode identically
    done = done or {}
    runs = {s.name: done.get(s.name) or _run_side(s, convs, names, params, pairs) for s in sides}
    model = runs["model"]
    base = runs.get("baseline")
    result: dict[str, Any] = {
        "model": side_scores(model),
        "baseline": side_scores(base) if base else {},
        "delta": {},
        "n": len(convs),
        "metrics": names,
        "primary": model.metrics.primary,
        "flips": _flips(convs, model, base) if base else [],
        "details": {k: r.metrics.details for k, r in runs.items()},
        "refs": {s.name: s.ref for s in sides},
        "decoding": {"greedy": True, "max_new_tokens": max_new_tokens},
    }
    if base:
        result["delta"] = {k: v - result["baseline"][k] for k, v in result["model"].items() if k in result["baseline"]}
    if pairs and all(r.pref is not None for r in runs.values()):
        result["preference"] = prefeval.preference_block({k: r.pref for k, r in runs.items()}, beta)
    result["per_task"] = per_task(convs, runs, metrics)
    prompts = [sides[0].engine.prompt_for(c) for c in convs]
    result["latency"] = measure_latency(sides[0], prompts, params, latency_samples)
    result["forgetting"] = forgetting_check(sides) if forgetting else {}
    rows = []
    for i, c in enumerate(convs):
        row: dict[str, Any] = {"i": i, "source": c.source, "prompt": _user_text(c), "reference": refs[i]}
        for name, r in runs.items():
            row[name] = r.preds[i]
            row[f"{name}_score"] = r.metrics.per_example[i]
            row[f"{name}_finish"] = r.results[i].finish_reason
        rows.append(row)
    return _finite(result), rows


def per_task(convs: Sequence[Conversation], runs: Mapping[str, SideRun],
             metrics: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Metrics for each ``task`` of the rows (general assistants mix 10+ task types): each task is scored
    with the metrics that fit its own references unless ``metrics`` were named."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(convs):
        if "task" in c.meta:
            groups.setdefault(c.meta["task"], []).append(i)
    out: dict[str, dict[str, Any]] = {}
    for task, idx in sorted(groups.items()):
        sub = [convs[i] for i in idx]
        names = metric_names(metrics, sub)
        refs = [c.final_reply() or "" for c in sub]
        entry: dict[str, Any] = {"n": len(idx)}
        for side, run in runs.items():
            entry[side] = M.compute(names, [run.preds[i] for i in idx], refs).scores
        out[task] = entry
    return out


def _finite(obj: Any) -> Any:
    """NaN/inf become None so eval.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _default_data(run_dir: Path) -> str:
    tests = (RunDir(run_dir).raw_config().get("data") or {}).get("test") or []
    first = tests[0] if tests else None
    path = first.get("path") if isinstance(first, dict) else first
    if not path:
        raise UsageError(f"{run_dir}: no data given and the run's config has no data.test file")
    return str(path)


def evaluate(
    model_ref: str,
    data_path: str | Path | None = None,
    baseline_ref: str | None = None,
    metrics: Sequence[str] | None = None,
    max_new_tokens: int = 128,
    limit: int | None = None,
    *,
    forgetting: bool = True,
    latency_samples: int = 4,
    dtype: str | None = None,
    batch_size: int = 16,
    write: bool = True,
    done: Mapping[str, SideRun] | None = None,
    engine: str = "transformers",
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate ``model_ref`` (model reference or run folder) on ``data_path``.

    ``baseline_ref``: None = the base model for a run (no baseline otherwise);
    ``"none"`` = no baseline. ``data_path`` defaults to a run's ``data.test``.
    ``device``/``dtype``: where the models run (``sftkit.hub.device``; the loss pass too).
    Evaluating a run writes ``eval.json`` and ``eval_predictions.jsonl`` into it.
    """

    run_dir = resolve(model_ref).run_dir
    if data_path is None:
        if run_dir is None:
            raise UsageError("no data file given (--data FILE)")
        data_path = _default_data(run_dir)
    convs, skipped, pairs = load_eval(data_path, limit)
    if engine == "vllm":
        sides = load_vllm_sides(model_ref, baseline_ref, batch_size=batch_size)
    else:
        sides = load_sides(model_ref, baseline_ref, dtype=dtype, batch_size=batch_size, device=device)
    beta = prefeval.run_beta(RunDir(run_dir).raw_config()) if run_dir is not None else 0.1
    result, rows = evaluate_sides(
        sides, convs, metrics, max_new_tokens=max_new_tokens, forgetting=forgetting, latency_samples=latency_samples,
        done=done, pairs=pairs, beta=beta,
    )
    result["data"] = str(data_path)
    result["skipped"] = skipped
    if write and run_dir is not None:
        write_outputs(run_dir, result, rows)
    return result


def write_outputs(out_dir: Path, result: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    with (out_dir / "eval_predictions.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def iter_headline(result: dict[str, Any]) -> Iterator[tuple[str, float | None, float | None, float | None]]:
    """(metric, model, baseline, delta) rows in display order."""
    for k, v in result.get("model", {}).items():
        if isinstance(v, int | float) or v is None:
            yield k, v, result.get("baseline", {}).get(k), result.get("delta", {}).get(k)


def load_vllm_sides(model_ref: str, baseline_ref: str | None, batch_size: int = 16, caps: Any = None) -> list[Any]:
    """Evaluation sides on one vLLM engine (``infer/vllm_engine.py``): the run with its adapter as a
    ``LoRARequest``, and its base model without it."""
    check_vllm(caps)
    resolved = resolve(model_ref)
    if resolved.merged:
        raise AcceleratorUnavailable(f"{model_ref} stacks an adapter on merged parent adapters, which vLLM cannot "
                                     "load: use --engine transformers, or evaluate its `sft export`")
    other = baseline_ref is not None and baseline_ref.strip().lower() not in NO_BASELINE
    if other:
        raise AcceleratorUnavailable("--engine vllm compares a run with its own base model (one engine, adapter "
                                     "on and off); for another --baseline use --engine transformers")
    import vllm
    from vllm.lora.request import LoRARequest

    tok = load_tokenizer(resolved.path)
    template = (RunDir(resolved.run_dir).template() if resolved.run_dir else None) or None
    renderer = build_renderer(tok, template)
    lora = resolved.adapter
    kw: dict[str, Any] = {"enable_lora": True, "max_lora_rank": vllm_engine.lora_rank(lora)} if lora is not None else {}
    llm = vllm.LLM(model=str(resolved.path), tokenizer=str(resolved.path), seed=0, **kw)
    req = LoRARequest("adapter", 1, str(lora)) if lora is not None else None
    sides = [Side("model", model_ref, vllm_engine.VllmEngine(llm, tok, renderer, vllm.SamplingParams, req, batch_size))]
    if baseline_ref is None and lora is not None:
        base = vllm_engine.VllmEngine(llm, tok, renderer, vllm.SamplingParams, None, batch_size)
        sides.append(Side("baseline", f"{resolved.path} (base)", base))
    return sides
