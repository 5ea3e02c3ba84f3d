"""Training invariants on the tiny random model: accumulation does not change the
update, packing does not contaminate, resume refuses changed inputs and skips
incomplete checkpoints. (Resume after SIGKILL at random points, Ctrl-C, NaN and disk
faults: tests/reliability/test_train_faults.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from sftkit.core.configio import load_config
from sftkit.core.conversation import Conversation
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.render import IGNORE, Renderer
from sftkit.train.collate import Collator, pack
from sftkit.train.recipe import run
from trainlib import rows as _rows
from trainlib import weights as _weights
from trainlib import write_workdir


@pytest.fixture
def workdir(tmp_path, tiny_model_dir):
    write_workdir(tmp_path, tiny_model_dir)
    return tmp_path


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


class _Seen(TrainerCallback):
    """Records what the trainer's model runs with."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        from sftkit.train.dropout import FastDropout

        self.attention = model.config._attn_implementation
        self.fast_dropouts = sum(isinstance(m, FastDropout) for m in model.modules())


def test_sftkit_attention_and_dropout_keep_the_loss_curve(workdir):
    """The CPU fast paths (segment attention, FastDropout) train like transformers' sdpa and torch's
    dropout: with dropout off the two runs match step for step; with it on, the curves stay close."""
    from trainlib import curve

    over = ["train.max_steps=6", "train.per_device_train_batch_size=4", "train.packing=true",
            "data.cutoff_len=96", "method.type=lora", "method.r=4", "method.dropout=0.0"]
    seen = _Seen()
    fast = run(load_config(workdir / "cfg.yaml", [*over, f"output_dir={workdir / 'fast'}"]), callbacks=[seen])
    assert seen.attention == "sftkit_segments"
    plain = run(load_config(workdir / "cfg.yaml", [*over, "model.attn_implementation=sdpa",
                                                   f"output_dir={workdir / 'plain'}"]))
    a, b = curve(fast.run_dir), curve(plain.run_dir)
    assert len(a) == 6 and [s for s, _ in a] == [s for s, _ in b]
    for (_, la), (_, lb) in zip(a, b, strict=True):
        assert abs(la - lb) < 1e-3 * max(1.0, abs(lb)), (a, b)
    assert a[-1][1] < a[0][1]  # and it learned

    seen = _Seen()
    fast_d = run(load_config(workdir / "cfg.yaml", [*over, "method.dropout=0.1", f"output_dir={workdir / 'fast_d'}"]),
                 callbacks=[seen])
    assert seen.fast_dropouts == 2 * 7  # every LoRA layer of the 2-layer model
    assert fast_d.final_loss is not None and abs(fast_d.final_loss - fast.final_loss) < 0.1 * fast.final_loss


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


def test_resume_ignores_incomplete_checkpoint_and_refuses_changed_data(workdir):
    over = ["train.max_steps=4", "train.save_steps=2", "train.per_device_train_batch_size=4"]
    first = run(load_config(workdir / "cfg.yaml", [*over, f"output_dir={workdir / 'r'}"]))
    ckpts = first.run_dir / "checkpoints"
    partial = ckpts / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    (workdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(15)))
    from sftkit.core.errors import TrainError

    with pytest.raises(TrainError, match=r"data file .*train.jsonl changed"):
        run(load_config(workdir / "cfg.yaml", [*over, "train.max_steps=6", f"output_dir={first.run_dir}"]),
            resume="auto")
    again = run(load_config(workdir / "cfg.yaml", [*over, "train.max_steps=6", f"output_dir={first.run_dir}"]),
                resume="auto", force=True)
    assert again.global_step == 6
    assert (ckpts / "checkpoint-6" / "sftkit_complete.json").exists()  # the partial one was replaced


def test_new_run_refuses_to_overwrite_checkpoints(workdir):
    from sftkit.core.errors import TrainError

    over = ["train.max_steps=2", "train.save_steps=2", f"output_dir={workdir / 'once'}"]
    run(load_config(workdir / "cfg.yaml", over))
    with pytest.raises(TrainError, match=r"holds a finished run.*--resume.*--overwrite"):
        run(load_config(workdir / "cfg.yaml", over))
    (workdir / "once" / "train_summary.json").unlink()  # as if killed after its last checkpoint
    with pytest.raises(TrainError, match="already holds checkpoints from an earlier run that did not finish"):
        run(load_config(workdir / "cfg.yaml", over))
