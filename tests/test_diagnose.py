"""Training diagnostics (issue 20, item 5): each check on synthetic curves at its thresholds, and the
callback on real Trainer runs of the tiny model (a high learning rate diverges; duplicated rows are
memorised), through diagnostics.json, train_summary.json, the report and the console's run page."""

from __future__ import annotations

import io
import json

import pytest

from sftkit.train.diagnose import Context, Thresholds, diverging, epoch_drop, find, flat, near_zero, overfitting

CTX = Context(learning_rate=2e-4, method="lora", lora_r=8, epochs=5, train_rows=64, duplicate_rows=0,
              trainable_share=0.4)
TH = Thresholds()


def curve(losses, start=1, every=1, epochs_per_step=0.0):
    return [(start + i * every, float(v), (start + i * every) * epochs_per_step) for i, v in enumerate(losses)]


# -- over-fitting ---------------------------------------------------------------------------------


def test_overfitting_needs_n_rises_while_training_loss_falls():
    train = curve([2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2], every=2)
    evals = [(4, 1.9, 1.0), (8, 1.7, 2.0), (12, 1.75, 3.0), (16, 1.85, 4.0)]
    f = overfitting(evals, train, CTX, TH)
    assert f is not None and f.kind == "overfitting" and f.step == 16
    assert "1.7 (step 8) -> 1.75 (step 12) -> 1.85 (step 16)" in f.message
    assert "lowest validation loss was 1.7 at step 8 (epoch 2)" in f.message
    assert f.evidence["best_step"] == 8 and f.evidence["train_after"] < f.evidence["train_before"]
    assert any("5 epochs over 64 rows" in c for c in f.causes)
    assert overfitting(evals[:3], train, CTX, TH) is None  # one rise is noise
    assert overfitting(evals[:3], train, CTX, Thresholds(rising_evals=1)) is not None  # N is the threshold
    wobble = [(4, 1.9, 1.0), (8, 1.7, 2.0), (12, 1.8, 3.0), (16, 1.75, 4.0)]
    assert overfitting(wobble, train, CTX, TH) is None


def test_both_losses_rising_is_not_overfitting():
    train = curve([1.0, 0.9, 0.8, 1.5, 2.5, 3.5, 4.0, 4.5, 5.0], every=2)
    evals = [(4, 1.0, 1.0), (8, 1.5, 2.0), (12, 2.5, 3.0), (16, 3.0, 4.0)]
    assert overfitting(evals, train, CTX, TH) is None
    assert [f.kind for f in find(train, evals, CTX, 100)] == ["diverging"]


# -- flat, memorised, diverging ---------------------------------------------------------------------


def test_flat_after_n_steps_names_the_guides_causes():
    still = curve([2.31, 2.30, 2.32, 2.29, 2.31, 2.30, 2.29, 2.30, 2.28, 2.29, 2.30, 2.29], every=3)
    f = flat(still, CTX, TH)
    assert f is not None and f.step == 34
    assert "2.31 (steps 1-7) -> 2.293 (steps 28-34)" in f.message and "-0.7% after 34" in f.message
    text = " ".join(f.causes)
    for cause in ("learning rate 0.0002", "masking (data.mask=assistant): 40% of training tokens", "template",
                  "LoRA rank 8"):
        assert cause in text
    assert flat(still[:9], CTX, TH) is None  # 25 steps: too early to tell
    falling = curve([2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2], every=3)
    assert flat(falling, CTX, TH) is None
    learnt_then_plateau = curve([2.3, 1.5, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], every=3)
    assert flat(learnt_then_plateau, CTX, TH) is None


def test_near_zero_early_is_memorised():
    dup = Context(learning_rate=1e-3, method="full", epochs=10, train_rows=32, duplicate_rows=28)
    train = curve([2.0, 1.0, 0.3, 0.04, 0.01], every=5)
    f = near_zero(train, dup, TH, planned_steps=100)
    assert f is not None and f.kind == "memorised" and f.step == 16
    assert "0.04 at step 16 of 100 (16% of the run" in f.message
    assert "28 of 32 training rows are exact duplicates" in f.causes[0]
    assert any("full fine-tuning of under 1,000 rows" in c for c in f.causes)
    assert near_zero(train, dup, TH, planned_steps=20) is None  # step 16 of 20 is late, not early
    assert near_zero(train, dup, Thresholds(near_zero=0.005), planned_steps=100) is None


def test_sudden_drop_at_epoch_two():
    end1 = [(s, 1.2, s / 10) for s in range(6, 11)]
    start2 = [(s, 0.4, s / 10) for s in range(11, 15)]
    f = epoch_drop(end1 + start2, CTX, TH)
    assert f is not None and "1.2 at the end of epoch 1 -> 0.4 at the start of epoch 2 (-67%)" in f.message
    gentle = end1 + [(s, 1.0, s / 10) for s in range(11, 15)]
    assert epoch_drop(gentle, CTX, TH) is None


def test_diverging_names_the_rate_and_missing_safeguards():
    hot = Context(learning_rate=3.0, method="full", max_grad_norm=0.0, warmup_ratio=0.0)
    train = curve([2.0, 1.5, 1.2, 1.1, 1.3, 2.0, 3.0, 3.5, 4.0])
    f = diverging(train, hot, TH)
    assert f is not None and "from its low of 1.2" in f.message
    assert "learning rate 3 (full: the guide's usual ~1e-5)" in f.causes[0]
    assert any("max_grad_norm 0" in c for c in f.causes) and any("warm-up" in c for c in f.causes)
    assert diverging(curve([2.0, 1.5, 1.2, 1.1, 1.2, 1.3, 1.4, 1.4, 1.45]), hot, TH) is None


# -- the callback on real training runs ---------------------------------------------------------------


def _rows(items):
    return "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                              ensure_ascii=False) + "\n" for q, a in items)


def _train(tmp_path, model_dir, train_rows, val_rows, train_cfg, eval_steps=6):
    from sftkit.core.configio import load_config
    from sftkit.train.recipe import run

    (tmp_path / "t.jsonl").write_text(_rows(train_rows), encoding="utf-8")
    (tmp_path / "v.jsonl").write_text(_rows(val_rows), encoding="utf-8")
    (tmp_path / "c.yaml").write_text(
        f"model:\n  name_or_path: {model_dir}\ndata:\n  train: t.jsonl\n  val: v.jsonl\n  cutoff_len: 64\n"
        "method:\n  type: full\ntrain:\n  per_device_train_batch_size: 4\n  logging_steps: 1\n"
        f"  eval_steps: {eval_steps}\n"
        "  lr_scheduler_type: constant\n  warmup_ratio: 0\n  group_by_length: false\n" + train_cfg)
    out = tmp_path / "run"
    run(load_config(tmp_path / "c.yaml", [f"output_dir={out}"]))
    return out, json.loads((out / "diagnostics.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_high_learning_rate_is_diagnosed_as_diverging(tmp_path, tiny_model_dir):
    rows = [(f"第{i}题：{i}加{i}等于几？", f"答案是{2 * i}。") for i in range(16)]
    out, diag = _train(tmp_path, tiny_model_dir, rows[:12], rows[12:],
                       "  max_steps: 24\n  learning_rate: 3.0\n  max_grad_norm: 0\n")
    kinds = {f["kind"] for f in diag["findings"]}
    assert "diverging" in kinds, diag["findings"]
    f = next(f for f in diag["findings"] if f["kind"] == "diverging")
    assert "learning rate 3" in f["causes"][0] and f["evidence"]["now"] > f["evidence"]["low"]
    assert diag["finished"] and diag["steps_seen"] == 24
    summary = json.loads((out / "train_summary.json").read_text())
    assert "diverging" in {d["kind"] for d in summary["diagnostics"]}
    assert "training loss is rising" in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_duplicated_rows_are_diagnosed_as_memorised(tmp_path, tiny_model_dir):
    row = ("恒远新能源的营业收入是多少？", "128.64亿元。")
    other = [(f"问题{i}：今天星期几？", f"今天星期{i}。") for i in range(1, 5)]
    _, diag = _train(tmp_path, tiny_model_dir, [row] * 32, other,
                     "  max_steps: 100\n  learning_rate: 1.0e-2\n  max_grad_norm: 1.0\n", eval_steps=25)
    memorised = [f for f in diag["findings"] if f["kind"] == "memorised"]
    assert memorised, diag["findings"]
    assert any("31 of 32 training rows are exact duplicates" in c for c in memorised[0]["causes"])
    assert memorised[0]["step"] <= 50 and memorised[0]["evidence"]["loss"] < 0.05  # in the first half
    assert diag["context"]["duplicate_rows"] == 31


@pytest.mark.parametrize("resume_rows", [0, 3])
def test_callback_reads_a_resumed_curve(tmp_path, resume_rows):
    """A resumed run continues the curve from metrics.jsonl (cut back to the checkpoint) before new logs."""
    from types import SimpleNamespace

    from rich.console import Console

    from sftkit.train.watch import Diagnostics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 2.3, "epoch": s / 50}) + "\n"
                               for s in range(1, 1 + resume_rows)) + "{torn", encoding="utf-8")
    log = io.StringIO()
    cb = Diagnostics(tmp_path / "diagnostics.json", metrics, CTX, Console(file=log))
    state = SimpleNamespace(is_world_process_zero=True, max_steps=100, global_step=resume_rows, epoch=0.0,
                            best_model_checkpoint=None)
    cb.on_train_begin(None, state, None)
    assert len(cb.train) == resume_rows
    args = SimpleNamespace(load_best_model_at_end=False)
    for s in range(resume_rows + 1, 41):
        state.global_step, state.epoch = s, s / 50
        cb.on_log(args, state, None, logs={"loss": 2.3 + 0.01 * (s % 2)})
    saved = json.loads((tmp_path / "diagnostics.json").read_text(encoding="utf-8"))
    assert [f["kind"] for f in saved["findings"]] == ["flat"]
    assert "diagnosis at step 30: loss is flat" in log.getvalue()
