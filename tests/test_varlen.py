"""sftkit_varlen: PyTorch's variable-length attention for padding-free batches.

torch's kernel only runs on CUDA, so its call is the one thing faked here: reference kernels with the
signatures torch has shipped (causality as ``is_causal`` or as ``window_size=(-1, 0)``; with and without
``enable_gqa`` / ``scale``) compute each segment as causal sdpa. Everything around them is real: the
boundaries from position ids and from the collator, grouped kv heads, the scale, transformers' model code,
the fp32 fallback, and the on-device probe, which on this CPU really fails and makes the plan fall back.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sftkit.hub.device import Capabilities
from sftkit.train import varlen
from sftkit.train.collate import Collator, FlatCollator, seq_len_kwargs
from sftkit.train.plan import Choice, TrainPlan, confirm_attention


def _segments(q, k, v, cu, causal, scale, gqa):
    if q.shape[1] != k.shape[1] and not gqa:
        raise ValueError("query and key/value heads differ; pass enable_gqa=True")
    lengths = (cu[1:] - cu[:-1]).tolist()
    outs = [F.scaled_dot_product_attention(qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1),
                                           is_causal=causal, scale=scale, enable_gqa=gqa).transpose(0, 1)
            for qs, ks, vs in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True)]
    return torch.cat(outs)


def kernel_window(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                  window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch 2.13's signature."""
    return _segments(query, key, value, cu_seq_q, window_size == (-1, 0), scale, enable_gqa)


def kernel_is_causal(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None):
    """An older signature: no scale, no grouped kv heads."""
    return _segments(query, key, value, cu_seq_q, is_causal, None, False)


def kernel_not_causal(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                      enable_gqa=False):
    """A broken kernel: ignores causality."""
    return _segments(query, key, value, cu_seq_q, False, scale, enable_gqa)


@pytest.fixture
def use_kernel(monkeypatch):
    def set_(fn):
        monkeypatch.setattr(varlen, "KERNEL", fn)
    return set_


def test_boundaries_from_position_ids_and_from_the_collator():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, longest = varlen.cu_seqlens(pos)
    assert cu.tolist() == [0, 3, 5, 9] and longest == 4 and cu.dtype == torch.int32
    assert varlen.cu_seqlens(pos)[0] is cu  # the same tensor in every layer: computed once
    two_rows = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 1]])  # a row never continues the previous one
    assert varlen.cu_seqlens(two_rows)[0].tolist() == [0, 4, 6, 8]
    kw = seq_len_kwargs(pos[0].tolist())
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 9] and kw["max_length_q"] == 4


@pytest.mark.parametrize("kernel", [kernel_window, kernel_is_causal])
def test_each_signature_gives_causal_attention_per_example(use_kernel, kernel):
    """Grouped kv heads (repeated when the kernel cannot take them) and a non-default scale (folded into the
    queries when it cannot be passed), values and gradients, against per-example causal sdpa."""
    use_kernel(kernel)
    assert varlen.probe("cpu", "float32") is None
    assert varlen.probe("cpu", "bfloat16") is None


def test_a_wrong_kernel_fails_the_probe_and_the_plan_falls_back(use_kernel):
    use_kernel(kernel_not_causal)
    problem = varlen.probe("cpu", "float32")
    assert problem and "differs from causal sdpa" in problem
    p = TrainPlan(Choice("sftkit_varlen", "planned"), Choice("bfloat16", ""), Choice("chunked", ""),
                  Choice("padding_free", "packed rows of <= 128 tokens concatenated ..."), "cuda",
                  Choice("fused", ""))
    # confirm_attention probes the real kernel: substitute the broken one for it
    fallen = confirm_attention(p, "cpu")
    assert fallen.attn_implementation.value == "sdpa" and "failed its check" in fallen.attn_implementation.reason
    assert fallen.packing.value == "packed"


def test_torch_kernel_on_this_cpu_fails_its_probe_for_real():
    """No mocks: torch's varlen kernels are CUDA-only, so on this machine the probe reports why."""
    problem = varlen.probe("cpu", "bfloat16")
    assert problem is not None and len(problem.splitlines()) == 1


def _model(tiny_model_dir, attn):
    from transformers import AutoModelForCausalLM

    if attn == varlen.NAME:
        varlen.register()
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32)
    m.config.use_cache = False
    return m


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rows(tokenizer):
    texts = ["你好，今天天气怎么样？晴天。", "Say alpha three times: alpha alpha alpha", "ok", "模型 训练 回答 " * 6]
    out = []
    for t in texts:
        ids = tokenizer(t)["input_ids"]
        out.append({"input_ids": ids, "labels": [-100, *ids[1:]]})
    return out


@pytest.mark.parametrize("kernel", [kernel_window, kernel_is_causal, None])
def test_padding_free_training_equals_padded_sdpa(tiny_model_dir, tokenizer, use_kernel, kernel):
    """The tiny Llama (4 heads, 2 kv heads) trained on a padding-free row gives the loss and every gradient of
    the same examples padded under sdpa. kernel None: torch's real kernel, which is 16-bit only, so fp32 takes
    the exact block-diagonal fallback."""
    use_kernel(kernel)
    rows = _rows(tokenizer)
    want = _loss_and_grads(_model(tiny_model_dir, "sdpa"), Collator(tokenizer.pad_token_id)(rows))
    flat = FlatCollator(tokenizer.pad_token_id, seq_lens=True)(rows)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    got = _loss_and_grads(_model(tiny_model_dir, varlen.NAME), flat)
    assert abs(got[0] - want[0]) < 1e-5
    assert got[1].keys() == want[1].keys()
    assert max((got[1][k] - want[1][k]).abs().max().item() for k in want[1]) < 1e-5
    # the boundaries derived from the position ids (no collator kwargs) give the same loss
    bare = {k: v for k, v in flat.items() if k in ("input_ids", "labels", "position_ids")}
    assert abs(_loss_and_grads(_model(tiny_model_dir, varlen.NAME), bare)[0] - want[0]) < 1e-5


def test_generation_falls_back_to_sdpa(tiny_model_dir, tokenizer, use_kernel):
    """Left-padded generation with a cache never reaches the varlen kernel, and matches sdpa."""
    def refuse(*a, **kw):
        raise AssertionError("the varlen kernel must not run in generation")

    use_kernel(refuse)
    batch = tokenizer(["你好", "Say alpha three times please"], return_tensors="pt", padding=True, padding_side="left")
    outs = []
    for attn in ("sdpa", varlen.NAME):
        m = _model(tiny_model_dir, attn).eval()
        m.config.use_cache = True
        outs.append(m.generate(**batch, max_new_tokens=5, do_sample=False))
    assert torch.equal(outs[0], outs[1])


def test_plan_picks_varlen_only_with_the_capability(tmp_path, tiny_model_dir):
    from sftkit.core.configio import load_config
    from sftkit.train.plan import plan

    (tmp_path / "t.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, '
                                      '{"role": "assistant", "content": "a"}]}\n')
    (tmp_path / "c.yaml").write_text(f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\n")
    cfg = load_config(tmp_path / "c.yaml")
    with_varlen = Capabilities(cuda=True, capability=(8, 0), bf16=True, torch_varlen=True)
    assert plan(cfg, with_varlen).attn_implementation.value == varlen.NAME
    assert plan(cfg, Capabilities(cuda=True, capability=(8, 0), bf16=True)).attn_implementation.value == "sdpa"


def test_the_kernel_runs_once_per_layer_on_padding_free_rows(tiny_model_dir, tokenizer, use_kernel):
    import functools

    calls = []

    @functools.wraps(kernel_window)  # the same signature, which is what the wiring reads
    def counting(*a, **kw):
        calls.append(a[3].tolist())  # cu_seq_q
        return kernel_window(*a, **kw)

    use_kernel(counting)
    flat = FlatCollator(tokenizer.pad_token_id, seq_lens=True)(_rows(tokenizer))
    _loss_and_grads(_model(tiny_model_dir, varlen.NAME), flat)
    assert len(calls) == 2  # two decoder layers
    assert calls[0] == flat["cu_seq_lens_q"].tolist() and len(calls[0]) >= 5  # 4 examples (+ padding)
