"""Every invalid config is rejected while the config loads, before any model is
resolved or loaded: the message has the file:line, the key path and a hint."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sftkit.core.configio import load_config
from sftkit.core.errors import ConfigError

BASE = "data:\n  train: t.jsonl\n"

# (yaml, key path in the message, text of the hint)
INVALID = [
    # unknown keys
    ("trian:\n  max_steps: 1\n" + BASE, "'trian'", "did you mean 'train'?"),
    ("method:\n  rr: 8\n" + BASE, "'method.rr'", "did you mean 'method.r'?"),
    ("model:\n  nme_or_path: x\n" + BASE, "'model.nme_or_path'", "did you mean 'model.name_or_path'?"),
    ("data:\n  train:\n    - path: t.jsonl\n      colums: {}\n", "'data.train.0.colums'", "did you mean"),
    # wrong types
    ("train:\n  learning_rate: fast\n" + BASE, "train.learning_rate", "hint: Peak learning rate"),
    ("train:\n  per_device_train_batch_size: [8]\n" + BASE, "train.per_device_train_batch_size", "hint: Sequences"),
    ("model:\n  trust_remote_code: 'yes'\n" + BASE, "model.trust_remote_code", "hint: Run Python code"),
    ("model:\n  allow_pickle: 1\n" + BASE, "model.allow_pickle", "hint: Load weights stored as pickle"),
    ("train:\n  packing: maybe\n" + BASE, "train.packing", "hint: Pack several examples"),
    ("data:\n  train: {path: 5}\n", "data.train", "hint: Training file(s)"),
    ("method:\n  type: lorax\n" + BASE, "method.type", "'lora', 'qlora', 'full' or 'freeze'"),
    ("data:\n  train: t.jsonl\n  mask: some\n", "data.mask", "'assistant', 'last' or 'all'"),
    # out of range
    ("train:\n  learning_rate: -1\n" + BASE, "train.learning_rate", "greater than 0"),
    ("train:\n  warmup_ratio: 1.5\n" + BASE, "train.warmup_ratio", "less than 1"),
    ("train:\n  max_steps: 0\n" + BASE, "train.max_steps", "-1 to train for num_train_epochs"),
    ("train:\n  max_steps: -5\n" + BASE, "train.max_steps", "greater than or equal to -1"),
    ("train:\n  save_steps: 0\n" + BASE, "train.save_steps", "hint: Save a checkpoint"),
    ("train:\n  seed: -1\n" + BASE, "train.seed", "hint: Seed"),
    ("train:\n  dataloader_num_workers: -2\n" + BASE, "train.dataloader_num_workers", "hint: Worker"),
    ("method:\n  dropout: 1.0\n" + BASE, "method.dropout", "less than 1"),
    ("method:\n  r: 0\n" + BASE, "method.r", "hint: LoRA rank"),
    ("data:\n  train: t.jsonl\n  cutoff_len: 0\n", "data.cutoff_len", "hint: Maximum tokens"),
    ("data:\n  train: t.jsonl\n  val_size: 1.0\n", "data.val_size", "less than 1"),
    ("data:\n  train: []\n", "data.train", "at least 1 item"),
    ("data:\n  train:\n    - path: t.jsonl\n      weight: 0\n", "data.train.0.weight", "greater than 0"),
    ("eval:\n  max_new_tokens: 0\n" + BASE, "eval.max_new_tokens", "hint: Tokens generated"),
    # unknown names
    ("eval:\n  metrics: [bleu, accuracyy]\n" + BASE, "eval.metrics", "choose from exact_match"),
    ("train:\n  report_to: [tensorbored]\n" + BASE, "train.report_to", "choose from tensorboard"),
    ("data:\n  train:\n    - path: t.jsonl\n      format: chatmlx\n", "data.train.0.format", "use one of messages"),
    ("data:\n  train:\n    - path: t.jsonl\n      columns: {foo: bar}\n", "data.train.0.columns", "canonical"),
    # contradictions
    ("method:\n  type: full\n  r: 64\n" + BASE, "method.r", "use method.type: lora"),
    ("method:\n  type: freeze\n  use_dora: true\n" + BASE, "method.use_dora", "use method.type: lora"),
    ("method:\n  type: qlora\n  freeze_trainable_layers: 4\n" + BASE, "method.freeze_trainable_layers",
     "use method.type: freeze"),
    ("method:\n  type: qlora\nmodel:\n  dtype: float16\ntrain:\n  bf16: true\n" + BASE, "model.dtype",
     "bfloat16 with train.bf16"),
    ("train:\n  bf16: true\n  fp16: true\n" + BASE, "train.fp16", "choose one"),
    ("train:\n  deepspeed: zero2\n  fsdp: full_shard\n" + BASE, "train.fsdp", "one sharding backend"),
    ("data:\n  train: t.jsonl\n  val: v.jsonl\n  val_size: 0.1\n", "data.val_size", "or remove data.val"),
    ("train:\n  early_stopping_patience: 2\n" + BASE, "train.early_stopping_patience", "add data.val"),
    ("train:\n  eval_steps: 10\n" + BASE, "train.eval_steps", "add data.val"),
    ("eval:\n  generate_every: 5\n" + BASE, "eval.generate_every", "add data.val"),
    ("train:\n  early_stopping_patience: 2\n  eval_steps: 4\n  save_steps: 6\n"
     "data:\n  train: t.jsonl\n  val_size: 0.1\n", "train.save_steps", "multiple of"),
]


@pytest.mark.parametrize(("text", "key", "hint"), INVALID, ids=[f"{i}-{c[1]}" for i, c in enumerate(INVALID)])
def test_invalid_config_names_key_and_hint(tmp_path, text, key, hint):
    p = tmp_path / "cfg.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert key in msg, msg
    assert hint in msg, msg
    assert msg.startswith(f"{p}:"), msg  # the file (and the line when the key is in the file)
    line = msg.split(":", 2)[1]
    assert line.isdigit() and 1 <= int(line) <= len(text.splitlines()), msg


def test_valid_neighbours_are_accepted(tmp_path):
    """The checks are not blanket refusals: the consistent versions load."""
    ok = [
        "method:\n  type: full\n  r: 8\n" + BASE,  # the default value, as in the reference config
        "method:\n  type: freeze\n  freeze_trainable_layers: 4\n" + BASE,
        "train:\n  early_stopping_patience: 2\n  eval_steps: 4\n  save_steps: 8\n"
        "data:\n  train: t.jsonl\n  val_size: 0.1\n",
        "eval:\n  generate_every: 5\n  metrics: [accuracy, bleu4]\ndata:\n  train: t.jsonl\n  val: v.jsonl\n",
        "train:\n  max_steps: -1\n  report_to: [none]\n" + BASE,
    ]
    for text in ok:
        p = tmp_path / "ok.yaml"
        p.write_text(text, encoding="utf-8")
        load_config(p)


def test_override_is_validated_too(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text(BASE)
    with pytest.raises(ConfigError, match=r"train\.fp16: contradictory options.*hint"):
        load_config(p, ["train.bf16=true", "train.fp16=true"])


def test_cli_rejects_before_resolving_or_loading_the_model(tmp_path):
    """`sft train` on an invalid config: exit 2 with the config message, and nothing after
    it ran: the model reference does not exist (resolving it would fail differently) and the
    run folder was never created."""
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n')
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model:\n  name_or_path: {tmp_path / 'no-such-model'}\noutput_dir: run\n"
                   "method:\n  type: full\n  r: 32\n" + BASE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = ("import sys; from sftkit.cli import main; sys.argv = ['sft', 'train', sys.argv[1]]\n"
            "try:\n    main()\nfinally:\n    print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, env=env, timeout=120,
                       check=False)
    assert r.returncode == 2, r.stderr
    assert f"{cfg}:6: method.r: contradictory options" in r.stderr and "hint:" in r.stderr
    assert "no-such-model" not in r.stderr  # the model reference was never looked at
    assert not (tmp_path / "run").exists()
    assert "IMPORTED False False" in r.stdout  # failed before the trainer (or torch) was even imported
