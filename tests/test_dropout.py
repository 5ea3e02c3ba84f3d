"""FastDropout (sftkit.train.dropout) is dropout: the right share dropped, kept values scaled to keep the
mean, gradients through the same mask, identity in eval, reproducible from the seed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sftkit.train.dropout import FastDropout, speed_up_lora_dropout  # noqa: E402


def test_drops_the_right_share_in_every_bit_lane_and_keeps_the_mean():
    drop = FastDropout(0.1).train()
    x = torch.ones(1_000_003)  # not a multiple of 4: the last 64-bit draw is cut
    y = drop(x)
    kept = y != 0
    assert y.unique().tolist() == pytest.approx([0.0, drop.scale])
    assert drop.scale == pytest.approx(1 / 0.9, rel=1e-4)
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    lanes = kept[:1_000_000].view(-1, 4).float().mean(0)  # each 16-bit lane of the 64-bit draws is uniform
    assert torch.all((lanes - 0.9).abs() < 0.004), lanes
    assert abs(y.mean().item() - 1.0) < 0.005


def test_gradient_goes_through_the_same_mask():
    drop = FastDropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    mask = (y != 0).float()
    torch.testing.assert_close(x.grad, mask * drop.scale)
    torch.testing.assert_close(y, x.detach() * mask * drop.scale)


def test_eval_is_identity_and_the_seed_reproduces_the_mask():
    drop = FastDropout(0.5)
    x = torch.randn(10, 10)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    torch.testing.assert_close(a, b)
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FastDropout(1.0)


def test_replaces_peft_lora_dropout(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    n = speed_up_lora_dropout(model)
    assert n == 2 * 7  # 2 layers x q k v o gate up down
    drops = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert len(drops) == n and all(d.p == 0.05 for d in drops)
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())


def test_lora_inputs_stay_16bit_under_autocast_with_the_same_values(tiny_model_dir):
    """keep_lora_inputs_16bit skips peft's fp32 copy of every LoRA input under autocast: the loss and the
    adapters' gradients are bit-for-bit those of peft's own path; outside autocast peft's cast still runs
    (a bf16 model with fp32 adapters still generates)."""
    from transformers import AutoModelForCausalLM

    from sftkit.core.config import MethodConfig
    from sftkit.train import dropout
    from sftkit.train.methods import attach

    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    results = []
    for skip in (False, True):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        original = dropout.keep_lora_inputs_16bit
        if not skip:
            dropout.keep_lora_inputs_16bit = lambda model: 0
        try:
            torch.manual_seed(0)  # the same adapter init
            model = attach(base, MethodConfig(type="lora", r=4, dropout=0.1))
        finally:
            dropout.keep_lora_inputs_16bit = original
        for name, p in model.named_parameters():  # B starts at zero: make the adapters matter both ways
            if "lora_B" in name:
                p.data.normal_(0, 0.5)
        model.train()
        torch.manual_seed(1)  # the same dropout masks on both paths
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads))
        model.eval()
        model.generate(input_ids=ids[:1, :5], max_new_tokens=2, do_sample=False)  # no autocast: peft casts
    assert results[0][0] == results[1][0]
    assert results[0][1].keys() == results[1][1].keys()
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])
