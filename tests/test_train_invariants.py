"""Training invariants on the tiny random model: accumulation does not change the
update, packing does not contaminate, resume after a kill continues exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sftkit.batching import Collator, pack
from sftkit.config import load_config
from sftkit.conversation import Conversation
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.render import IGNORE, Renderer
from sftkit.train import run


def _rows(n: int) -> list[dict]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return [{"messages": [
        {"role": "user", "content": f"Say {words[i % 8]} {i} times" + " please" * (i % 5)},
        {"role": "assistant", "content": " ".join([words[(i * 3) % 8]] * (1 + i % 6))},
    ]} for i in range(n)]


@pytest.fixture
def workdir(tmp_path, tiny_model_dir):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(16)))
    (tmp_path / "cfg.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\n"
        "data:\n  train: train.jsonl\n  cutoff_len: 128\n"
        "method:\n  type: full\n"
        "train:\n  learning_rate: 1.0e-3\n  lr_scheduler_type: constant\n  warmup_ratio: 0.0\n"
        "  logging_steps: 1\n  max_grad_norm: 0.0\n  group_by_length: false\n  save_total_limit: 3\n"
    )
    return tmp_path


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_batch_8x1_equals_batch_1x8_accumulation(workdir):
    over = ["train.max_steps=1", "train.per_device_train_batch_size=8"]
    a = run(load_config(workdir / "cfg.yaml", [*over, "train.gradient_accumulation_steps=1",
                                                f"output_dir={workdir / 'a'}"]))
    over = ["train.max_steps=1", "train.per_device_train_batch_size=1"]
    b = run(load_config(workdir / "cfg.yaml", [*over, "train.gradient_accumulation_steps=8",
                                                f"output_dir={workdir / 'b'}"]))
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff < 1e-5, diff
    # and the update was real
    base = load_file(str(next(p for p in (workdir.parent).rglob("model.safetensors") if "tiny-llama" in str(p))))
    assert max((wa[k] - base[k]).abs().max().item() for k in base if k in wa) > 1e-4


def _rendered(tokenizer, n=6):
    r = Renderer(HFChatTemplate(tokenizer), tokenizer)
    return [r.render(Conversation.from_messages(row["messages"])) for row in _rows(n)]


def _logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_packing_does_not_leak_between_examples(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    ex = _rendered(tokenizer, 3)
    collate = Collator(tokenizer.pad_token_id)
    packed = pack(ex, max_len=4096)
    assert len(packed) == 1
    row = packed[0]
    n0 = len(ex[0].input_ids)
    assert row["position_ids"][n0] == 0 and row["labels"][n0] == IGNORE
    base = _logits(model, collate([row]))[0]
    # change the first example: the logits of the others must not move
    changed = list(ex)
    changed[0] = type(ex[0])([*ex[0].input_ids[:-3], 100, 200, 300], ex[0].labels, ex[0].text)
    other = _logits(model, collate([pack(changed, 4096)[0]]))[0]
    assert torch.allclose(base[n0:len(row["input_ids"])], other[n0:len(row["input_ids"])], atol=1e-5)
    # and each packed example sees exactly what it sees alone
    start = 0
    for e in ex:
        alone = _logits(model, collate([{"input_ids": e.input_ids, "labels": e.labels}]))[0, :len(e.input_ids)]
        assert torch.allclose(base[start:start + len(e.input_ids)], alone, atol=1e-4)
        start += len(e.input_ids)


def test_packed_loss_equals_unpacked_loss(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    ex = _rendered(tokenizer, 6)
    collate = Collator(tokenizer.pad_token_id)
    with torch.no_grad():
        packed = collate(list(pack(ex, max_len=4096).rows))
        unpacked = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in ex])
        lp = model(**packed).loss
        lu = model(**unpacked).loss
    assert torch.allclose(lp, lu, atol=1e-5), (lp, lu)


_KILLER = """
import os, signal, sys
from transformers import TrainerCallback
from sftkit.config import load_config
from sftkit.train import run

class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)

cfg = load_config(sys.argv[1], [f"output_dir={sys.argv[2]}", "train.max_steps=6", "train.save_steps=2",
                                "train.per_device_train_batch_size=4"])
run(cfg, callbacks=[Kill()])
"""


def test_resume_after_sigkill_matches_uninterrupted(workdir):
    over = ["train.max_steps=6", "train.save_steps=2", "train.per_device_train_batch_size=4"]
    full = run(load_config(workdir / "cfg.yaml", [*over, f"output_dir={workdir / 'full'}"]))

    killed = workdir / "killed"
    script = workdir / "killer.py"
    script.write_text(_KILLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script), str(workdir / "cfg.yaml"), str(killed), "5"],
                          check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (killed / "model").exists()
    resumed = run(load_config(workdir / "cfg.yaml", [*over, f"output_dir={killed}"]), resume="auto")
    assert resumed.global_step == 6

    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6
    assert _curve(full.run_dir) == _curve(killed)


def _curve(run_dir):
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], round(r["loss"], 5)) for r in rows if "loss" in r]


def test_resume_ignores_incomplete_checkpoint_and_refuses_changed_data(workdir):
    over = ["train.max_steps=4", "train.save_steps=2", "train.per_device_train_batch_size=4"]
    first = run(load_config(workdir / "cfg.yaml", [*over, f"output_dir={workdir / 'r'}"]))
    ckpts = first.run_dir / "checkpoints"
    partial = ckpts / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    (workdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(15)))
    from sftkit.train import TrainError

    with pytest.raises(TrainError, match=r"data file .*train.jsonl changed"):
        run(load_config(workdir / "cfg.yaml", [*over, "train.max_steps=6", f"output_dir={first.run_dir}"]),
            resume="auto")
    again = run(load_config(workdir / "cfg.yaml", [*over, "train.max_steps=6", f"output_dir={first.run_dir}"]),
                resume="auto", force=True)
    assert again.global_step == 6
    assert (ckpts / "checkpoint-6" / "sftkit_complete.json").exists()  # the partial one was replaced


def test_new_run_refuses_to_overwrite_checkpoints(workdir):
    from sftkit.train import TrainError

    over = ["train.max_steps=2", "train.save_steps=2", f"output_dir={workdir / 'once'}"]
    run(load_config(workdir / "cfg.yaml", over))
    with pytest.raises(TrainError, match="already holds checkpoints"):
        run(load_config(workdir / "cfg.yaml", over))
