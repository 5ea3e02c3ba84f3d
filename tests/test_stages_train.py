"""Every stage trains through the one recipe on the tiny model: the loss falls; the LoRA reference is the base
with the adapter off (no copy); runs build on runs (adapter trained further or merged); impossible combinations
are refused with the reason; a preference run resumes where it stopped."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from sftkit.core.configio import load_config
from sftkit.core.errors import MethodUnavailable, TrainError
from sftkit.train.faults import Interrupted
from sftkit.train.recipe import run

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
TRAIN = ("  learning_rate: 1.0e-2\n  lr_scheduler_type: constant\n  warmup_ratio: 0.0\n  logging_steps: 1\n"
         "  per_device_train_batch_size: 4\n  group_by_length: false\n  save_total_limit: 5\n")


def pairs(n: int = 4) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Say {WORDS[i % 8]}"}], "chosen": f"{WORDS[i % 8]} " * 2,
             "rejected": f"no {WORDS[(i + 3) % 8]}"} for i in range(n)]


def chats(n: int = 4) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Say {WORDS[i % 8]}"},
                          {"role": "assistant", "content": f"{WORDS[(i * 3) % 8]} ok"}]} for i in range(n)]


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def config(tmp: Path, name: str, model: str, data: str, body: str = "", steps: int = 4) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(f"name: {name}\noutput_dir: runs/{name}\n{body}model:\n  name_or_path: {model}\n"
                 f"data:\n  train: {data}\n  cutoff_len: 48\ntrain:\n  max_steps: {steps}\n{TRAIN}")
    return p


def losses(run_dir: Path) -> list[float]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if "loss" in r]


def lora_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(".default", ""): v for k, v in state.items() if "lora_" in k}


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pairs.jsonl", pairs())
    write(tmp_path / "chats.jsonl", chats())
    return tmp_path


@pytest.mark.parametrize("stage", ["dpo", "kto", "orpo", "simpo"])
def test_preference_stage_loss_falls(work, tiny_model_dir, stage):
    data = write(work / "kto.jsonl", pairs(2)) if stage == "kto" else "pairs.jsonl"  # KTO: 2 pairs = 4 rows
    tracker = ["train.report_to=[tensorboard]"] if stage == "dpo" else []  # trackers see TRL's metrics too
    cfg = load_config(config(work, stage, str(tiny_model_dir), data, f"stage: {stage}\n"), tracker)
    res = run(cfg)
    curve = losses(res.run_dir)
    if tracker:
        assert list((res.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
        logged = (res.run_dir / "metrics.jsonl").read_text()
        assert "rewards/margins" in logged  # TRL's preference metrics reach sftkit's metrics.jsonl
    assert len(curve) == 4 and curve[-1] < curve[0], curve  # the same 4 rows every step
    summary = json.loads((res.run_dir / "train_summary.json").read_text())
    assert summary["stage"] == stage and "parent" not in summary
    assert not (res.run_dir / "adapter" / "ref").exists()


def test_pt_on_c4_and_wiki_shapes_loss_falls(work, tiny_model_dir, shared_data):
    peers = shared_data / "peers"
    (work / "c4.jsonl").write_text("".join((peers / "c4_demo.jsonl").read_text().splitlines(True)[:6]))
    (work / "wiki.txt").write_text("".join((peers / "wiki_demo.txt").read_text().splitlines(True)[:2]))
    p = config(work, "pt", str(tiny_model_dir), "[c4.jsonl, wiki.txt]", "stage: pt\n", steps=5)
    p.write_text(p.read_text() + "method:\n  type: full\n")
    res = run(load_config(p, ["train.learning_rate=3e-3"]))
    curve = losses(res.run_dir)
    assert curve[-1] < curve[0], curve
    rep = json.loads((res.run_dir / "data_report.json").read_text())
    assert rep["stage"] == "pt" and rep["pretrain"]["documents"] == 8 and rep["train_trainable_tokens"] > 0
    assert {f["format"] for f in rep["train"]["files"]} == {"jsonl", "txt"}


def test_distill_loss_falls_and_another_vocabulary_is_refused(work, tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    teacher = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(1)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    m.save_pretrained(teacher)
    for f in tiny_model_dir.glob("tokenizer*"):
        (teacher / f.name).write_bytes(f.read_bytes())
    body = f"stage: distill\nteacher:\n  name_or_path: {teacher}\n"
    res = run(load_config(config(work, "kd", str(tiny_model_dir), "chats.jsonl", body)))
    curve = losses(res.run_dir)
    assert curve[-1] < curve[0] and curve[0] > 0, curve

    data = json.loads((teacher / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["sftkit_extra_token"] = max(vocab.values()) + 1  # one token more: another vocabulary
    (teacher / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(MethodUnavailable, match=r"another vocabulary than the student.*token by token"):
        run(load_config(config(work, "kd2", str(tiny_model_dir), "chats.jsonl", body)))
    assert not (work / "runs" / "kd2").exists()


def test_lora_reference_is_the_base_with_the_adapter_off(work, tiny_model_dir):
    """After training, the reference forward TRL runs (the adapter switched off) equals the untouched base
    model bit for bit, while the policy has moved; and no second model or adapter copy is held."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import use_adapter

    seen = {}

    class Grab(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
            model.eval()
            with torch.no_grad():
                seen["policy"] = model(input_ids=ids).logits
                with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                    seen["reference"] = model(input_ids=ids).logits
            seen["adapters"] = list(model.peft_config)

    run(load_config(config(work, "ref", str(tiny_model_dir), "pairs.jsonl", "stage: dpo\n")), callbacks=[Grab()])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = base(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])).logits
    assert seen["adapters"] == ["default"]
    assert torch.equal(seen["reference"], expected)
    assert not torch.allclose(seen["policy"], expected)


@pytest.mark.slow
def test_two_stage_run_continues_the_sft_adapter(work, tiny_model_dir):
    """SFT -> DPO: at step 0 of stage 2 the adapter is stage 1's final adapter; the run records its parent;
    the reference is a frozen copy of that adapter; evaluation compares with the parent run."""
    sft = config(work, "sft", str(tiny_model_dir), "chats.jsonl")
    stage1 = run(load_config(sft))
    start = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            from peft import get_peft_model_state_dict

            start["policy"] = {k: v.clone() for k, v in get_peft_model_state_dict(model, adapter_name="default")
                               .items()}
            start["ref"] = get_peft_model_state_dict(model, adapter_name="ref") if "ref" in model.peft_config else {}

    dpo = config(work, "dpo2", "sft.yaml", "pairs.jsonl", "stage: dpo\n")  # the config of stage 1 names its run
    dpo.write_text(dpo.read_text().replace("cutoff_len: 48\n", "cutoff_len: 48\n  test: pairs.jsonl\n"))
    stage2 = run(load_config(dpo), callbacks=[AtStart()])
    final1 = load_file(str(stage1.run_dir / "adapter" / "adapter_model.safetensors"))
    assert start["policy"].keys() == final1.keys()
    assert all(torch.equal(start["policy"][k], final1[k]) for k in final1)
    assert all(torch.equal(start["ref"][k], final1[k]) for k in final1)
    final2 = load_file(str(stage2.run_dir / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(final2[k], final1[k]) for k in final1)  # trained further
    summary = json.loads((stage2.run_dir / "train_summary.json").read_text())
    assert summary["parent"]["run_dir"] == str(stage1.run_dir) and summary["parent"]["how"].startswith("trains")
    assert (stage2.run_dir / "config.yaml").read_text().startswith(f"# parent: {stage1.run_dir} (sft, trained to")

    from sftkit.evaluate.report import write_report
    from sftkit.evaluate.runner import evaluate

    result = evaluate(str(stage2.run_dir), max_new_tokens=4, forgetting=False, latency_samples=0)
    write_report(stage2.run_dir)
    assert result["refs"]["baseline"].endswith("(parent run)")
    pref = result["preference"]
    assert pref["n"] == 4 and pref["beta"] == 0.1 and {"reward_accuracy", "reward_margin"} <= set(pref)
    assert 0.0 <= result["model"]["pref_accuracy"] <= 1.0
    assert "Preference pairs" in (stage2.run_dir / "report.html").read_text()


def test_merge_base_trains_a_new_adapter_on_the_merged_parent(work, tiny_model_dir):
    from sftkit.hub.models import load_model, resolve

    stage1 = run(load_config(config(work, "s1", str(tiny_model_dir), "chats.jsonl")))
    body = "stage: dpo\nmethod:\n  merge_base: true\n"
    stage2 = run(load_config(config(work, "s2", str(stage1.run_dir), "pairs.jsonl", body, steps=2)))
    resolved = resolve(str(stage2.run_dir))
    assert resolved.merged == (stage1.run_dir / "adapter",) and resolved.adapter == stage2.run_dir / "adapter"
    model = load_model(resolved)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), model.disable_adapter():
        merged_base = model(input_ids=ids).logits
    parent = load_model(resolve(str(stage1.run_dir)))
    with torch.no_grad():
        assert torch.allclose(merged_base, parent(input_ids=ids).logits, atol=1e-5)


def test_impossible_combinations_are_refused_before_any_folder(work, tiny_model_dir):
    stage1 = run(load_config(config(work, "p", str(tiny_model_dir), "chats.jsonl", steps=1)))
    cases = [
        ("method:\n  use_dora: true\n", "DoRA False .*method.use_dora is True"),
        ("method:\n  r: 4\n", "rank 8 .*method.r is 4"),
        ("method:\n  type: full\n", "set method.merge_base: true"),
        ("template: qwen2_chatml\n", "trained with template"),
    ]
    for i, (body, message) in enumerate(cases):
        with pytest.raises(TrainError, match=message):
            run(load_config(config(work, f"bad{i}", str(stage1.run_dir), "chats.jsonl", body)))
        assert not (work / "runs" / f"bad{i}").exists()
    with pytest.raises(TrainError, match="no LoRA adapter to merge"):
        run(load_config(config(work, "bad9", str(tiny_model_dir), "chats.jsonl", "method:\n  merge_base: true\n")))


@pytest.mark.slow
def test_dpo_resumes_where_it_stopped(work, tiny_model_dir):
    """Stopped by SIGINT (checkpoint at the end of the step), resumed: the same final weights as one
    uninterrupted run."""
    write(work / "pairs.jsonl", pairs(12))
    body = "stage: dpo\n"
    whole = run(load_config(config(work, "whole", str(tiny_model_dir), "pairs.jsonl", body, steps=6),
                            ["train.save_steps=2"]))

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends: save at the end of the step, stop

    cfg = load_config(config(work, "parts", str(tiny_model_dir), "pairs.jsonl", body, steps=6), ["train.save_steps=2"])
    with pytest.raises(Interrupted):
        run(cfg, callbacks=[Interrupt()])
    run_dir = work / "runs" / "parts"
    assert not (run_dir / "train_summary.json").exists() and (run_dir / "checkpoints" / "checkpoint-3").is_dir()
    resumed = run(cfg, resume="auto")
    assert resumed.global_step == 6
    a = load_file(str(whole.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
