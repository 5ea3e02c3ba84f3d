"""FastDropout (sftkit.train.dropout) is dropout: the right share dropped, kept values scaled to keep the
mean, gradients through the same mask, identity in eval, reproducible from the seed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sftkit.estimate.memory import DROPOUT_GAPS_MAX_P  # noqa: E402
from sftkit.train.dropout import (  # noqa: E402
    FastDropout,
    add_kept,
    draw_drops,
    dropped_levels,
    speed_up_lora_dropout,
    zero_dropped,
)


def test_drops_the_right_share_in_every_bit_lane_and_keeps_the_mean():
    drop = FastDropout(0.1).train()  # above DROPOUT_GAPS_MAX_P: the bits' keep mask
    x = torch.ones(1_000_003)  # not a multiple of 4: the last 64-bit draw is cut
    y = drop(x)
    kept = y != 0
    assert y.unique().tolist() == pytest.approx([0.0, drop.scale])
    assert drop.scale == pytest.approx(1 / 0.9, rel=1e-4)
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    lanes = kept[:1_000_000].view(-1, 4).float().mean(0)  # each 16-bit lane of the 64-bit draws is uniform
    assert torch.all((lanes - 0.9).abs() < 0.004), lanes
    assert abs(y.mean().item() - 1.0) < 0.005


@pytest.mark.parametrize("p", [0.05, 0.001, DROPOUT_GAPS_MAX_P])
def test_dropped_positions_are_independent_bernoulli_draws(p):
    """Small p: the positions drawn from geometric gaps drop the right share, uniformly over the tensor
    (first and last thousand elements included), with no memory between neighbours (P(next dropped |
    dropped) = p), sorted and unique, and reproducible from torch's seed."""
    n = 2_000_003
    dropped = dropped_levels(p)
    q = dropped / 65536
    torch.manual_seed(11)
    pos = draw_drops(torch.Size([n]), dropped, torch.device("cpu"))
    assert pos.dtype == torch.int64 and pos.numel() > 0
    assert int(pos.min()) >= 0 and int(pos.max()) < n and bool((pos[1:] > pos[:-1]).all())
    sd = (n * q * (1 - q)) ** 0.5
    assert abs(pos.numel() - n * q) < 5 * sd
    hits = torch.zeros(n, dtype=torch.bool)
    hits[pos] = True
    bins = hits[: n - n % 20].view(20, -1).float().sum(1)  # 20 equal stretches, the ends included
    per = (n // 20) * q
    assert ((bins - per).abs() < 5 * (per * (1 - q)) ** 0.5 + 1).all(), bins
    follows = hits[1:][hits[:-1]].float().mean().item()  # the element after a dropped one
    assert abs(follows - q) < 5 * (q * (1 - q) / max(1, pos.numel())) ** 0.5 + 1e-4
    torch.manual_seed(11)
    assert torch.equal(draw_drops(torch.Size([n]), dropped, torch.device("cpu")), pos)


def test_positions_and_masks_apply_alike():
    """zero_dropped / add_kept give the same values from positions as from the equivalent keep mask."""
    torch.manual_seed(0)
    shape = torch.Size([37, 53])
    pos = draw_drops(shape, dropped_levels(0.05), torch.device("cpu"))
    mask = torch.ones(shape.numel(), dtype=torch.uint8)
    mask[pos] = 0
    mask = mask.view(shape)
    x, u, out = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    torch.testing.assert_close(zero_dropped(x.clone(), pos), zero_dropped(x.clone(), mask), rtol=0, atol=0)
    torch.testing.assert_close(add_kept(out.clone(), u.clone(), pos, 1.5), add_kept(out.clone(), u, mask, 1.5))
    assert (zero_dropped(x.clone(), pos) == 0).sum() == pos.numel()
    for p in (0.05, 0.3):  # an empty input (a mixture-of-experts expert that got no tokens)
        assert FastDropout(p).train()(torch.randn(0, 8)).shape == (0, 8)


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_gradient_goes_through_the_same_mask(p):
    drop = FastDropout(p).train()
    leaf = torch.randn(64, 33, requires_grad=True)
    x = leaf.transpose(0, 1)  # not contiguous: positions are row-major
    y = drop(x)
    y.sum().backward()
    mask = (y != 0).float()
    torch.testing.assert_close(leaf.grad.transpose(0, 1), mask * drop.scale)
    torch.testing.assert_close(y, x.detach() * mask * drop.scale)


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_eval_is_identity_and_the_seed_reproduces_the_mask(p):
    drop = FastDropout(p)
    x = torch.randn(100, 10)
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
