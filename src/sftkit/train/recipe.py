"""``sft train``: config -> data -> model -> trainer -> run folder.

Read ``run()`` top to bottom; every step is one call into a small module.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sftkit import __version__
from sftkit.core.config import Method, RunConfig
from sftkit.core.configio import check_data_files, config_to_yaml
from sftkit.core.errors import DoesNotFit, TrainError
from sftkit.core.rundir import Action, Overwrite, Plan, RunDir, config_digest
from sftkit.core.stagecfg import PREF_STAGES, Stage
from sftkit.data import stagedata, write_rejects
from sftkit.data.prepare import Prepared, prepare
from sftkit.estimate import preflight
from sftkit.evaluate.report import write_report
from sftkit.hub import models, safety
from sftkit.hub.device import detect
from sftkit.templates import check_template
from sftkit.templates.registry import load_template
from sftkit.templates.render import Renderer
from sftkit.train import accel, attention, distributed, faults, lineage, stages, tracking, varlen
from sftkit.train import plan as planning
from sftkit.train.callbacks import (
    CheckpointMarker,
    MetricsLogger,
    RichProgress,
    last_complete_checkpoint,
    plot_loss,
    print_summary,
)
from sftkit.train.collate import Examples, pack
from sftkit.train.fingerprint import differences, fingerprint
from sftkit.train.gen_eval import GenerationEval
from sftkit.train.methods import count_parameters, deepspeed_config, quantization_config
from sftkit.train.plan import TrainPlan
from sftkit.train.watch import Diagnostics, context_for


@dataclass
class TrainResult:
    run_dir: Path
    train_seconds: float
    global_step: int
    final_loss: float | None
    best_eval_loss: float | None
    already_finished: bool = False  # --resume on a run that had finished with this config: nothing was done


def _is_main() -> bool:
    """Rank 0 under torchrun (or the only process): the one that writes the run folder; with
    per-node storage also each node's local rank 0, into its own copy (``train.distributed``)."""
    return distributed.current().writes_run_folder()


def _plan(folder: RunDir, cfg: RunConfig, resume: str | None, overwrite: Overwrite) -> Plan:
    """Whether this run may use its folder (reads only). Rank 0 decides and acts; another rank
    only needs to know whether there is nothing to do, which rank 0 never changes (``RunDir.claim``
    clears a finished run's summary before it records the new config)."""
    if _is_main():
        return folder.plan(cfg, resume, overwrite)
    done = resume == "auto" and folder.summary.is_file() and folder.recorded_digest() == config_digest(cfg)
    return Plan(Action.DONE if done else Action.NEW)


def _claim(folder: RunDir, cfg: RunConfig, resume: str | None, overwrite: Overwrite, console: Console,
           device_plan: TrainPlan, header: str = "") -> None:
    """Make the folder this run's (rank 0): everything before this only read. Then, many nodes: if
    output_dir is each node's own disk, each node's local rank 0 claims its own copy. ``header``: the
    comment lines naming the parent run (a run built on a run)."""
    if _is_main():
        _claim_one(folder, cfg, resume, overwrite, console, device_plan, header)
    if distributed.current().storage(folder.path, cfg.train.deepspeed):
        _claim_one(folder, cfg, resume, overwrite, console, device_plan, header)


def _claim_one(folder: RunDir, cfg: RunConfig, resume: str | None, overwrite: Overwrite, console: Console,
               device_plan: TrainPlan, header: str) -> None:
    plan = folder.claim(cfg, resume, overwrite)
    if plan.moved_to is not None:
        console.print(f"[yellow]--overwrite: moved the previous run to {plan.moved_to}[/]", soft_wrap=True)
    elif plan.replace is Overwrite.DELETE:
        console.print(f"[dim]removed the previous run in {folder.path}[/]", soft_wrap=True)
    elif plan.action is Action.CONTINUE:
        console.print(f"continuing the finished run in {folder.path}; its train_summary.json and evaluation "
                      "(eval.json, report.html) described the old weights and were removed", soft_wrap=True)
    _write_config(folder, cfg, device_plan, header)


def _write_config(folder: RunDir, cfg: RunConfig, plan: TrainPlan, header: str = "") -> None:
    """The parent-run header, the user's values (``auto`` stays ``auto``, so the file loads, resumes and
    digests as written), then what this machine resolved them to as a ``# plan:`` comment block."""
    folder.config.write_text(header + config_to_yaml(cfg) + planning_block(plan), encoding="utf-8")


def planning_block(plan: TrainPlan) -> str:
    return "\n" + plan.comment_block()


def _already_finished(folder: RunDir, console: Console) -> TrainResult:
    s = folder.read_summary()
    console.print(f"{folder.path} already finished training with this config (step {s.get('global_step', '?')}); "
                  "nothing to do. To train it again from scratch use --overwrite (the old run is moved aside)",
                  soft_wrap=True)
    return TrainResult(folder.path, 0.0, int(s.get("global_step") or 0), s.get("train_loss"),
                       s.get("best_eval_loss"), already_finished=True)


def _write_environment(run_dir: Path) -> None:
    import peft
    import torch
    import transformers


    env = {"sftkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2))


def _write_data_report(run_dir: Path, data: Prepared) -> None:
    (run_dir / "data_report.json").write_text(json.dumps(data.report, indent=2, ensure_ascii=False))
    write_rejects(data.rejects, run_dir / "rejected.jsonl")


def _check_template(template: Any, tokenizer: Any, data: Prepared, model_path: Path, console: Console) -> Any:
    """The template contract (sftkit.templates.check) must hold before any compute is spent (and
    before the run folder is made: a run that fails it leaves nothing behind). Returns the report."""
    from transformers import GenerationConfig

    if not data.sample:  # stage pt: plain text, no template
        console.print("template: none (stage pt trains on plain text)")
        return None

    try:
        gen = GenerationConfig.from_pretrained(model_path)
    except OSError:
        gen = None
    report = check_template(template, tokenizer, data.sample, generation_config=gen)
    if not report.ok:
        reasons = "; ".join(f"{f.check}: {f.message}" for f in report.failures)
        raise TrainError(f"template check failed for {template.name!r}: {reasons} "
                         "(`sft template check` explains; nothing was written)")
    console.print(f"template: {template.name} (contract check passed)")
    return report


def _load_base(cfg: RunConfig, path: Path, plan: TrainPlan) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = plan.dtype.value
    kw: dict[str, Any] = {"dtype": getattr(torch, dtype),
                          "use_safetensors": safety.use_safetensors(path, cfg.model.allow_pickle),
                          "trust_remote_code": cfg.model.trust_remote_code}
    attn = plan.attn_implementation.value
    if attn == attention.NAME:
        attention.register()
    elif attn == varlen.NAME:
        varlen.register()
    if cfg.model.attn_implementation or attn != "sdpa":  # else transformers' own choice, as before
        kw["attn_implementation"] = attn
    qc = quantization_config(cfg.method, "bfloat16" if dtype == "float32" else dtype)
    if qc is not None:
        # one whole copy per process on its own device: "auto" would spread every rank's copy over all GPUs
        where = {"": int(os.environ.get("LOCAL_RANK", "0"))} if torch.cuda.is_available() else "cpu"
        kw.update(quantization_config=qc, device_map=where)
    return AutoModelForCausalLM.from_pretrained(path, **kw)


def _training_args(cfg: RunConfig, run_dir: Path, has_val: bool, report_to: list[str]) -> dict[str, Any]:
    """The TrainingArguments keywords every stage shares (``stages.arguments`` builds the object)."""
    import torch

    t = cfg.train
    if t.fsdp and not torch.cuda.is_available():
        raise TrainError("train.fsdp needs GPUs: on CPU accelerate silently replaces FSDP with plain DDP; "
                         "leave train.fsdp unset here (use `sft train --nproc N` for data parallelism)")
    strategy = ("steps" if t.eval_steps else "epoch") if has_val else "no"
    save_strategy = "steps" if t.save_steps else "epoch"
    if has_val and strategy != save_strategy:  # best-checkpoint tracking needs them aligned
        save_strategy = strategy
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=strategy,
        eval_steps=t.eval_steps,
        save_strategy=save_strategy,
        save_steps=t.save_steps or t.eval_steps or 500,  # best-model tracking needs a multiple of eval_steps
        # never fewer than 2: the previous complete checkpoint must survive a kill during the next save
        save_total_limit=max(2, t.save_total_limit) if t.save_total_limit else None,
        metric_for_best_model="eval_loss" if has_val else None,
        load_best_model_at_end=bool(has_val and (t.early_stopping_patience or t.load_best_model_at_end)),
        bf16=t.bf16,
        fp16=t.fp16,
        activation_checkpointing=t.gradient_checkpointing,
        neftune_noise_alpha=t.neftune_noise_alpha,
        report_to=report_to or "none",
        train_sampling_strategy="group_by_length" if t.group_by_length and not t.packing else "random",
        optim=t.optim,
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        deepspeed=deepspeed_config(t.deepspeed),
        fsdp=t.fsdp or "",
        save_on_each_node=distributed.current().per_node,  # per-node disks: each keeps a full copy
        use_liger_kernel=t.use_liger_kernel,
        prediction_loss_only=True,  # evaluation needs the loss only; the chunked head returns no logits
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )


def _save_final(trainer: Any, tokenizer: Any, cfg: RunConfig, run_dir: Path) -> Path:
    """Every rank calls this: under DeepSpeed ZeRO-3 / FSDP the weights are sharded and saving gathers
    them (``Trainer.save_model``); only rank 0 writes, and the folder appears complete or not at all."""
    out = run_dir / ("adapter" if cfg.method.type in (Method.lora, Method.qlora) else "model")
    tmp = run_dir / f".{out.name}.tmp"
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.config.use_cache = True  # switched off for training; inference wants it back
    trainer.save_model(str(tmp))
    if _is_main():
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.yaml holds the settings
        shutil.rmtree(tmp / "ref", ignore_errors=True)  # TRL's frozen reference adapter (stages.py), not trained
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return out


def _step_of(checkpoint: str | None) -> int:
    """The optimizer step a checkpoint folder (``checkpoint-N``) was written at; 0 for a fresh start."""
    tail = Path(checkpoint).name.rpartition("-")[2] if checkpoint else ""
    return int(tail) if tail.isdigit() else 0


def _preflight(cfg: RunConfig, data: Prepared, force: bool, console: Console, plan: TrainPlan) -> None:
    """Refuse a run that cannot fit the device, before the weights load (``--force`` overrides): only when
    even the estimate's lower bound exceeds it; above the estimate but not its lower bound, warn and train.
    Batches are padded to their longest row, so the real longest row sets the activations."""

    rows = data.train.examples + data.val.examples
    longest = cfg.data.cutoff_len if cfg.train.packing else max(stagedata.longest(e) for e in rows)
    try:
        est = preflight(cfg, max_len=longest, plan=plan.values())
    except DoesNotFit as e:
        if not force:
            raise
        console.print(f"[yellow]--force: training although the estimate ({e.estimate.total_gb:.1f} GB) "
                      "says it will not fit[/]")
        return
    if not est.fits:
        console.print(f"[yellow]memory estimate {est.total_gb:.2f} GB is above the {est.device.memory_gb:.1f} GB "
                      f"available, but its lower bound {est.lower_gb:.2f} GB is not: training; if it runs out of "
                      "memory, halve train.per_device_train_batch_size (`sft estimate CONFIG` explains)[/]",
                      soft_wrap=True)
        return
    console.print(f"memory estimate: {est.total_gb:.2f} GB of {est.device.memory_gb:.1f} GB available")


def _check_fingerprint(folder: RunDir, current: dict[str, Any], resume: str | None, force: bool) -> None:
    """Resuming: refuse inputs that changed since the checkpoints were written (reads only)."""
    path = folder.fingerprint
    if resume and path.exists():
        diffs = differences(json.loads(path.read_text()), current)
        if diffs and not force:
            raise TrainError(f"refusing to resume {folder.path}: {'; '.join(diffs)} since the checkpoints were "
                             f"written (resume with the original inputs, start a new output_dir, or pass --force)")


def _write_records(folder: RunDir, fp: dict[str, Any], data: Prepared, template_report: Any) -> None:
    """What the run was made from, written once the folder is claimed (rank 0)."""
    if not _is_main():
        return
    _write_environment(folder.path)
    tmp = folder.fingerprint.with_suffix(f".tmp{os.getpid()}")  # atomic: another rank may be reading it
    tmp.write_text(json.dumps(fp, indent=2))
    os.replace(tmp, folder.fingerprint)
    _write_data_report(folder.path, data)
    if template_report is not None:
        folder.template_check.write_text(json.dumps(template_report.to_dict(), indent=2, ensure_ascii=False))


def _prepare_stage(cfg: RunConfig, renderer: Renderer, tokenizer: Any) -> Prepared:
    """The stage's rows: conversations (sft, distill), preference pairs or feedback, or text blocks (pt)."""
    if cfg.stage is Stage.pt:
        return stagedata.prepare_pt(cfg.data, tokenizer, cfg.train.seed)
    if cfg.stage in PREF_STAGES:
        return stagedata.prepare_preference(cfg.data, renderer, cfg.stage.value, cfg.train.seed)
    return prepare(cfg.data, renderer, cfg.train.seed)


def _resume_point(run_dir: Path, resume: str | None, console: Console) -> str | None:
    if not resume:
        return None
    if resume != "auto":
        if not Path(resume).is_dir():
            raise TrainError(f"--resume {resume}: no such checkpoint folder")
        return resume
    ckpts = run_dir / "checkpoints"
    last = last_complete_checkpoint(ckpts)
    for partial in sorted(ckpts.glob("checkpoint-*")) if ckpts.is_dir() else []:
        newer = last is None or int(partial.name.split("-")[-1]) > int(last.name.split("-")[-1])
        if newer and _is_main():  # written when the run was killed mid-save: never load it; make room for the redo
            console.print(f"[yellow]removing incomplete checkpoint {partial.name}[/]", soft_wrap=True)
            shutil.rmtree(partial)
    if last is None:  # killed before the first checkpoint was complete: nothing to lose by starting over
        console.print(f"[yellow]--resume: no complete checkpoint under {ckpts} yet; starting from step 0[/]",
                      soft_wrap=True)  # never wrapped: a path broken across lines cannot be copied
        return None
    console.print(f"resuming from {last}", soft_wrap=True)
    return str(last)


def _report_data(data: Prepared, run_dir: Path, console: Console) -> None:
    r = data.report
    console.print(f"data: {r['train_examples']} train / {r['val_examples']} val examples, "
                  f"{r['rejected']} rejected (see {run_dir / 'rejected.jsonl'}), {r['truncated']} truncated",
                  soft_wrap=True)
    kto = r.get("kto_balance")
    if kto and "desirable_weight_range" in kto:  # TRL's own advice is lost with pre-tokenized rows: give it here
        lo, hi = kto["desirable_weight_range"]
        console.print(f"kto: {kto['desirable']} desirable / {kto['undesirable']} undesirable rows; the KTO paper "
                      f"advises pref.desirable_weight in [{lo}, {hi}] for this balance")
    q = r.get("quality") or {"lint": {}, "exact_duplicate_rows": 0}  # pt: documents are not linted
    issues = {k: v for k, v in q["lint"].items() if v}
    if issues or q["exact_duplicate_rows"]:
        console.print(f"[yellow]data quality:[/] {q['exact_duplicate_rows']} exact duplicate rows, lint {issues} "
                      "(details: `sft data lint` / `sft data dedup`)")


def _build_model(cfg: RunConfig, start: lineage.Start, console: Console, plan: TrainPlan, folder: RunDir,
                 header: str) -> tuple[Any, int, int, TrainPlan]:
    """The model ready to train, and the plan as confirmed against it (recorded again if it changed)."""
    from transformers import set_seed

    path = start.resolved.path
    set_seed(cfg.train.seed)  # the adapters' random init is part of what train.seed makes reproducible
    if cfg.train.backend == "unsloth":  # Unsloth loads and attaches LoRA itself (GPU only)
        model = accel.unsloth_model(cfg, path, plan.dtype.value)
        model.config.use_cache = False
    else:
        base = _load_base(cfg, path, plan)
        base.config.use_cache = False  # no KV cache in training: memory, and packing masks need it off
        model = lineage.build(cfg, start, base)  # a fresh method, or a parent run's adapter trained further
    confirmed = planning.install_loss_head(model, planning.confirm_loss_head(plan, model))
    confirmed = planning.install_lora_kernel(model, confirmed)
    if confirmed != plan and _is_main():  # the loss head or the fused LoRA layer could not apply to this model
        _write_config(folder, cfg, confirmed, header)
    _show_plan(confirmed, console)
    trainable, total = count_parameters(model)
    console.print(f"model: {path.name} method={cfg.method.type.value} trainable {trainable:,} / "
                  f"{total:,} parameters ({100 * trainable / total:.2f}%), "
                  f"attention {getattr(model.config, '_attn_implementation', None)}", soft_wrap=True)
    return model, trainable, total, confirmed


def _show_plan(plan: TrainPlan, console: Console) -> None:
    console.print(f"plan on {plan.device}:", highlight=False)
    for line in plan.lines():
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def _train_rows(cfg: RunConfig, data: Prepared, console: Console) -> Examples:
    t = cfg.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    eff = t.per_device_train_batch_size * t.gradient_accumulation_steps * world
    console.print(f"effective batch = {t.per_device_train_batch_size} per device x "
                  f"{t.gradient_accumulation_steps} accumulation x {world} device(s) = {eff} sequences/step",
                  soft_wrap=True)
    if cfg.stage in stages.TRL_STAGES:
        return stages.dataset(data.train.examples, cfg.stage)
    if not t.packing:
        return Examples.from_rendered(data.train.examples)
    rows = pack(data.train.examples, cfg.data.cutoff_len)
    console.print(f"packing: {len(data.train.examples)} examples into {len(rows)} rows of <= "
                  f"{cfg.data.cutoff_len} tokens")
    return rows


def _callbacks(cfg: RunConfig, run_dir: Path, data: Prepared, renderer: Renderer, tokens_per_step: float,
               console: Console, extra: list[Any]) -> list[Any]:
    from transformers import EarlyStoppingCallback

    folder = RunDir(run_dir)
    out = [MetricsLogger(folder.metrics, tokens_per_step), RichProgress(console, tokens_per_step),
           Diagnostics(folder.diagnostics, folder.metrics, context_for(cfg, data.report), console),  # after the logger
           CheckpointMarker(), faults.NonFiniteLossGuard(stages.guard_rows(data), run_dir / "checkpoints"), *extra]
    if cfg.eval.generate_every and data.val_conversations:
        out.append(GenerationEval(renderer, data.val_conversations[: cfg.eval.generate_samples], cfg.eval.metrics,
                                  cfg.eval.generate_every, cfg.eval.max_new_tokens, run_dir / "metrics.jsonl"))
    if cfg.train.early_stopping_patience and data.val.examples:
        out.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return out


def _trainer(cfg: RunConfig, model: Any, args: Any, train_rows: Any, data: Prepared, tokenizer: Any,
             teacher: Any, plan: TrainPlan, callbacks: list[Any]) -> Any:
    """transformers' Trainer for sft and pt; the stage's TRL trainer otherwise (``stages.py``)."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    collator = accel.train_collator(cfg, tokenizer.pad_token_id, plan)
    if cfg.stage in stages.TRL_STAGES:
        val_rows = stages.dataset(data.val.examples, cfg.stage) if data.val.examples else None
        trainer = stages.trl_trainer(cfg, model, args, train_rows, val_rows, tokenizer, callbacks, teacher, collator)
    else:
        trainer = Trainer(model=model, args=args, train_dataset=train_rows,
                          eval_dataset=Examples.from_rendered(data.val.examples) if data.val.examples else None,
                          data_collator=collator, processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # RichProgress and MetricsLogger report instead
    trainer.remove_callback(ProgressCallback)
    return trainer


@distributed.in_session  # many processes: one failing stops them all (alone: nothing changes)
def run(
    cfg: RunConfig,
    resume: str | None = None,
    console: Console | None = None,
    callbacks: list[Any] | None = None,
    force: bool = False,
    overwrite: Overwrite = Overwrite.NO,
) -> TrainResult:
    """Train as ``cfg`` says; extra Trainer ``callbacks`` may observe the run (tests, the console).

    ``overwrite``: what happens to an earlier run in the output folder (``RunDir.plan`` says when
    one is in the way). Nothing is written until the config, data and template have passed."""
    accel_warnings = accel.check_train(cfg)  # GPU switches: refuse what this machine cannot do, before any work
    stages.require(cfg.stage)  # TRL for the preference and distillation stages
    check_data_files(cfg)  # then a missing data file is named
    folder = RunDir(cfg.run_dir())
    plan = _plan(folder, cfg, resume, overwrite)  # a folder training may not use is refused before any work
    if not _is_main():
        console = Console(stderr=True, quiet=True)  # one voice under torchrun: rank 0
    console = console or Console(stderr=True)
    if plan.action is Action.DONE:
        return _already_finished(folder, console)
    for w in accel_warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    run_dir = folder.path
    report_to, tracker_callbacks = tracking.setup(cfg.train.report_to, run_dir, cfg.name, say=console.print)

    resolved = models.resolve(cfg.model.name_or_path)
    start = lineage.plan_start(cfg, resolved)  # a run to build on: refuse what cannot work before any loading
    safety.check_remote_code(resolved.path, cfg.model.trust_remote_code)
    device_plan = planning.for_run(cfg, resolved.path, detect())  # per-device defaults (sftkit.train.plan)
    if _is_main():
        full = cfg.method.type in (Method.full, Method.freeze)
        faults.check_free_space(run_dir, faults.checkpoint_need(resolved.path, full, cfg.train.save_total_limit),
                                reused=plan.replace is not Overwrite.MOVE_ASIDE)
    console.print(safety.describe_paths(cfg, resolved.path, run_dir), highlight=False, soft_wrap=True)
    tokenizer = models.load_tokenizer(resolved.path, cfg.model.trust_remote_code)
    template = load_template(cfg.template, tokenizer)
    renderer = Renderer(template, tokenizer, cfg.data.mask, cfg.data.cutoff_len, cfg.data.overflow)
    fp = fingerprint(cfg, renderer, resolved.path, start.parent)
    sync = distributed.current()
    sync.agree(cfg, fp, resolved.path)  # every node runs the same sftkit, config, data, model, or all stop
    _check_fingerprint(folder, fp, resume, force)
    data = sync.prepared(lambda: _prepare_stage(cfg, renderer, tokenizer))  # once per node, then checked
    _preflight(cfg, data, force, console, device_plan)
    template_report = _check_template(template, tokenizer, data, resolved.path, console)
    teacher = stages.load_teacher(cfg, tokenizer, console, device_plan.dtype.value) if cfg.stage is Stage.distill \
        else None  # before the folder is claimed: a teacher of another vocabulary is refused first

    _claim(folder, cfg, resume, overwrite, console, device_plan, header := lineage.yaml_header(start.parent))
    _write_records(folder, fp, data, template_report)
    checkpoint = sync.checkpoint(_resume_point(run_dir, resume, console), folder, resume, console)
    _report_data(data, run_dir, console)
    model, trainable, total, device_plan = _build_model(cfg, start, console, device_plan, folder, header)
    train_rows = _train_rows(cfg, data, console)

    tokens_per_step = data.report["train_tokens"] / max(1, len(train_rows)) * (
        cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps
        * int(os.environ.get("WORLD_SIZE", "1")))
    stop = faults.GracefulStop()  # Ctrl-C: checkpoint at the end of the step, then exit 130
    args = stages.arguments(cfg, _training_args(cfg, run_dir, bool(data.val.examples), report_to))
    trainer = _trainer(cfg, model, args, train_rows, data, tokenizer, teacher, device_plan,
                       _callbacks(cfg, run_dir, data, renderer, tokens_per_step, console,
                                  [stop, *tracker_callbacks, *(callbacks or [])]))

    t0 = time.perf_counter()
    with faults.io_failures(run_dir), stop:  # disk full / refused unpickling; Ctrl-C saves, then stops
        out = trainer.train(resume_from_checkpoint=checkpoint)
    stop.raise_if_stopped(run_dir, trainer.state.max_steps)
    seconds = time.perf_counter() - t0

    final = _save_final(trainer, tokenizer, cfg, run_dir)
    if _is_main():
        _finish(folder, out, trainer, seconds, tokens_per_step, checkpoint, (trainable, total), final, console,
                device_plan, {"stage": cfg.stage.value, **({"parent": start.parent} if start.parent else {})})
    return TrainResult(run_dir, seconds, out.global_step, out.training_loss, trainer.state.best_metric)


def _diagnoses(folder: RunDir) -> list[dict[str, Any]]:
    """What the loss curves said (``diagnostics.json`` has the numbers, causes and actions)."""
    try:
        found = json.loads(folder.diagnostics.read_text(encoding="utf-8"))["findings"]
    except (OSError, ValueError, KeyError):
        return []
    return [{"kind": f["kind"], "step": f["step"], "title": f["title"]} for f in found]


def _finish(folder: RunDir, out: Any, trainer: Any, seconds: float, tokens_per_step: float,
            checkpoint: str | None, params: tuple[int, int], final: Path, console: Console, plan: TrainPlan,
            extra: dict[str, Any]) -> None:
    """Rank 0, after the final weights are in place: the curves, the summary (its presence means
    the run finished), the report."""

    plot_loss(folder.metrics, folder.loss_plot)
    summary = {"train_seconds": round(seconds, 2), "global_step": out.global_step,
               "train_loss": out.training_loss, "best_eval_loss": trainer.state.best_metric,
               "best_checkpoint": trainer.state.best_model_checkpoint,
               "tokens": round(tokens_per_step * out.global_step),
               "session_tokens": round(tokens_per_step * (out.global_step - _step_of(checkpoint))),
               "trainable_parameters": params[0], "total_parameters": params[1], "final": str(final),
               "plan": plan.values(), "plan_reasons": plan.reasons(), "plan_device": plan.device,
               "diagnostics": _diagnoses(folder), **extra}
    folder.summary.write_text(json.dumps(summary, indent=2))
    write_report(folder.path)  # updated again by `sft eval`
    print_summary(console, folder.path, summary)
