"""The chunked loss head equals the plain one (loss and every gradient) and never holds [N x V] logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sftkit.train.losshead import (
    LossHeadUnsupported,
    install,
    linear_cross_entropy,
    loss_from_model,
    shift_labels,
    unsupported_reason,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(n=33, h=16, v=50, dtype=torch.float32, seed=0, frozen=False):
    """Hidden rows, head weight and bias (scaled like a trained head) and labels with ~40% ignored."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (0.3 * torch.randn(v, h, generator=g)).to(dtype).requires_grad_(not frozen)
    bias = (0.1 * torch.randn(v, generator=g)).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.4] = -100
    labels[:5] = -100  # a run of ignored rows, as a prompt makes
    return hidden, weight, bias, labels


def _plain(hidden, weight, labels, bias=None, reduction="sum", softcap=None):
    logits = F.linear(hidden, weight, bias)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float().reshape(-1, weight.shape[0]), labels.reshape(-1), reduction=reduction)


def _loss_and_grads(loss, tensors):
    return loss.detach(), torch.autograd.grad(loss, [t for t in tensors if t.requires_grad])


@pytest.mark.parametrize("chunk", [3, 7, 20, 1000])  # smaller than, not dividing, and larger than N=33
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_plain_head_fp32(chunk, reduction, recompute, with_bias):
    hidden, weight, bias, labels = _inputs()
    bias = bias if with_bias else None
    params = [hidden, weight] + ([bias] if with_bias else [])
    want = _loss_and_grads(_plain(hidden, weight, labels, bias, reduction), params)
    got = _loss_and_grads(linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_tokens=chunk,
                                               reduction=reduction, recompute=recompute), params)
    torch.testing.assert_close(got, want, **TOL)


def test_matches_plain_head_batched_with_all_ignored_row():
    """[B, T, H] input, one sequence fully masked (a prompt-only example)."""
    hidden, weight, _, labels = _inputs(n=3 * 11)
    hidden3, labels3 = hidden.reshape(3, 11, -1), labels.reshape(3, 11).clone()
    labels3[1] = -100
    want = _loss_and_grads(_plain(hidden3, weight, labels3, reduction="mean"), [hidden, weight])
    got = _loss_and_grads(linear_cross_entropy(hidden3, weight, labels3, chunk_tokens=4, reduction="mean"),
                          [hidden, weight])
    torch.testing.assert_close(got, want, **TOL)
    assert torch.count_nonzero(got[1][0][11:22]) == 0  # the masked sequence gets no gradient


@pytest.mark.parametrize("recompute", [False, True])
def test_softcap_matches_plain(recompute):
    hidden, weight, bias, labels = _inputs()
    hidden = (4 * hidden.detach()).requires_grad_()  # logits large enough that tanh bends them
    want = _loss_and_grads(_plain(hidden, weight, labels, bias, softcap=5.0), [hidden, weight, bias])
    got = _loss_and_grads(linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_tokens=8,
                                               logit_softcap=5.0, recompute=recompute), [hidden, weight, bias])
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("num_items", [None, 17])
def test_matches_transformers_causal_lm_loss(num_items):
    """Unshifted labels through shift_labels + our sum / num_items == transformers' ForCausalLMLoss."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    hidden, weight, _, labels = _inputs(n=2 * 12)
    hidden2, labels2 = hidden.reshape(2, 12, -1), labels.reshape(2, 12)
    count = None if num_items is None else torch.tensor(num_items)
    logits = F.linear(hidden2, weight)
    want = _loss_and_grads(ForCausalLMLoss(logits, labels2, weight.shape[0], num_items_in_batch=count),
                           [hidden, weight])
    ours = linear_cross_entropy(hidden2, weight, shift_labels(labels2), chunk_tokens=5,
                                reduction="mean" if count is None else "sum")
    got = _loss_and_grads(ours if count is None else ours / count, [hidden, weight])
    torch.testing.assert_close(got, want, **TOL)


def test_bf16_as_close_to_fp32_truth_as_the_plain_bf16_head():
    """bf16 keeps 8 significant bits (relative step 2^-8 = 0.4%), so bf16 heads differ from each other by a
    few steps; what must hold is that ours is no further from the exact (fp64) answer than the plain bf16
    head is. The loss itself is computed in fp32 from the same bf16 logits in both, so it agrees to 1e-4."""
    hidden, weight, bias, labels = _inputs(n=300, h=64, v=120, dtype=torch.bfloat16)
    params = [hidden, weight, bias]
    plain = _loss_and_grads(_plain(hidden, weight, labels, bias), params)
    ours = _loss_and_grads(linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_tokens=32), params)
    exact_in = [p.detach().double().requires_grad_() for p in params]
    exact = _loss_and_grads(_plain(exact_in[0], exact_in[1], labels, exact_in[2]), exact_in)
    torch.testing.assert_close(ours[0], plain[0], atol=1e-4, rtol=1e-4)
    for mine, theirs, truth in zip(ours[1], plain[1], exact[1], strict=True):
        assert mine.dtype == theirs.dtype == torch.bfloat16
        err_mine = (mine.double() - truth).abs().max()
        err_plain = (theirs.double() - truth).abs().max()
        assert err_mine <= 1.5 * err_plain + 1e-6, (err_mine, err_plain)


def test_autocast_recompute_uses_the_forward_compute_dtype():
    """Under autocast the backward's recomputed chunks run in bf16 as the forward did (matching eager)."""
    hidden, weight, _, labels = _inputs(n=64, h=32, v=80)
    results = []
    for recompute in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, weight, labels, chunk_tokens=16, recompute=recompute)
        results.append(_loss_and_grads(loss, [hidden, weight]))
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    exact = _loss_and_grads(_plain(hidden, weight, labels), [hidden, weight])
    assert not torch.equal(results[0][1][1], exact[1][1])  # autocast really ran (bf16 products differ)


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out

    def largest(self):
        return max(torch.Size(s).numel() for s in self.shapes)


def test_frozen_weight_never_builds_a_weight_gradient():
    hidden, weight, _, labels = _inputs(n=40, v=60, frozen=True)
    want = _loss_and_grads(_plain(hidden, weight, labels), [hidden])
    for recompute in (False, True):
        with _Shapes() as rec:
            loss = linear_cross_entropy(hidden, weight, labels, chunk_tokens=8, recompute=recompute)
            got = _loss_and_grads(loss, [hidden])
        torch.testing.assert_close(got, want, **TOL)
        assert tuple(weight.shape) not in rec.shapes  # no [V, H] gradient buffer, no weight.grad
    weight.requires_grad_()
    with _Shapes() as rec:
        _loss_and_grads(linear_cross_entropy(hidden, weight, labels, chunk_tokens=8), [hidden, weight])
    assert tuple(weight.shape) in rec.shapes  # the recorder does see it when the head trains


@pytest.mark.parametrize("recompute", [False, True])
def test_never_materialises_all_logits(recompute):
    n, h, v, chunk = 256, 8, 512, 16
    hidden, weight, _, labels = _inputs(n=n, h=h, v=v)
    labels[:] = torch.randint(0, v, (n,))  # every row trains: the selection alone would not shrink N
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with _Shapes() as rec, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = linear_cross_entropy(hidden, weight, labels, chunk_tokens=chunk, recompute=recompute)
        loss.backward()
    assert rec.largest() <= chunk * v, rec.largest()
    assert max(saved) <= max(n * h, v * h)  # the graph keeps inputs or gradients, never logits
    with _Shapes() as plain_rec, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _plain(hidden, weight, labels).backward()
    assert plain_rec.largest() >= n * v and max(saved) >= n * v  # the check catches the plain head


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("recompute", [False, True])
def test_no_trained_rows_gives_zero_loss_and_zero_gradients(reduction, recompute):
    hidden, weight, bias, labels = _inputs()
    labels[:] = -100
    loss = linear_cross_entropy(hidden, weight, labels, bias=bias, reduction=reduction, recompute=recompute)
    loss.backward()
    assert loss.item() == 0.0
    for p in (hidden, weight, bias):
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


def test_bad_arguments_say_what_and_where():
    hidden, weight, _, labels = _inputs()
    labels[7] = weight.shape[0]
    with pytest.raises(ValueError, match=r"label 50 is outside the vocabulary \[0, 50\)"):
        linear_cross_entropy(hidden, weight, labels)
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean'"):
        linear_cross_entropy(hidden, weight, labels, reduction="none")
    with pytest.raises(ValueError, match=r"does not match labels"):
        linear_cross_entropy(hidden, weight, labels[:-1])
    with pytest.raises(ValueError, match=r"is not \[vocab, 16\]"):
        linear_cross_entropy(hidden, weight.T, labels)


# ---- whole models --------------------------------------------------------------------------------------

def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


def _batch(vocab=128):
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (3, 14), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 10:] = 0  # right padding
    labels = input_ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[attention_mask == 0] = -100
    return input_ids, attention_mask, labels


def _model_loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same_as_model(model, num_items=None, chunk_tokens=7):
    input_ids, attention_mask, labels = _batch(model.config.vocab_size)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    want = _model_loss_and_grads(model, lambda: model(input_ids, attention_mask=attention_mask,
                                                      labels=labels, **extra).loss)
    got = _model_loss_and_grads(model, lambda: loss_from_model(model, input_ids, labels, attention_mask,
                                                               chunk_tokens=chunk_tokens, **extra))
    torch.testing.assert_close(got[0], want[0], **TOL)
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], **TOL, msg=name)
    return got


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("num_items", [None, 40])
def test_loss_from_model_matches_llama(tied, num_items):
    model = _tiny_llama(tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    _, grads = _assert_same_as_model(model, num_items)
    assert grads["model.embed_tokens.weight"].abs().sum() > 0


def test_loss_from_model_matches_lora_wrapped_llama():
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      init_lora_weights=False)  # B != 0 so every LoRA matrix gets a gradient
    model = get_peft_model(_tiny_llama(tied=False), lora)
    _, grads = _assert_same_as_model(model, num_items=30)
    assert grads and all("lora_" in name for name in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_loss_from_model_matches_gemma2_softcapping():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0)
    _assert_same_as_model(Gemma2ForCausalLM(cfg))


def test_install_routes_training_calls_and_restores():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(tied=True), LoraConfig(r=4, target_modules=["q_proj"],
                                                              init_lora_weights=False))
    input_ids, attention_mask, labels = _batch()
    plain = model(input_ids, attention_mask=attention_mask, labels=labels)
    restore = install(model, chunk_tokens=5)
    routed = model(input_ids, attention_mask=attention_mask, labels=labels, num_items_in_batch=torch.tensor(7))
    assert routed.logits is None  # the full logits were never made
    torch.testing.assert_close(routed.loss, plain.loss * _trained(labels) / 7, **TOL)
    generating = model(input_ids, attention_mask=attention_mask)  # no labels: the model's own forward
    torch.testing.assert_close(generating.logits, plain.logits, **TOL)
    restore()
    assert model(input_ids, attention_mask=attention_mask, labels=labels).logits is not None


def _trained(labels):
    return int((shift_labels(labels) != -100).sum())


def test_refuses_heads_it_cannot_reproduce():
    from peft import LoraConfig, get_peft_model

    model = _tiny_llama(tied=False)
    assert unsupported_reason(model) is None
    model.config.logit_scale = 0.0625  # Cohere multiplies the logits after lm_head
    assert "config.logit_scale=0.0625" in unsupported_reason(model)
    del model.config.logit_scale
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head"]))
    input_ids, attention_mask, labels = _batch()
    with pytest.raises(LossHeadUnsupported, match=r"not a plain nn\.Linear"):
        loss_from_model(wrapped, input_ids, labels, attention_mask)
    with pytest.raises(LossHeadUnsupported, match=r"not a plain nn\.Linear"):
        install(wrapped)
