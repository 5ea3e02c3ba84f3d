"""Block attention (sftkit.train.blockattn) is exact causal attention: output and gradients equal torch's
SDPA in fp32 for every length around the block size, grouped-query or not, strided inputs included; in
bf16 it is as close to the fp32 result as torch's own bf16 kernel is. Segment attention routes CPU
segments through it, and long segments (memory bound) or attention dropout to SDPA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.nn.functional import scaled_dot_product_attention as sdpa  # noqa: E402

from sftkit.estimate.memory import block_attention_bytes, block_probs_bytes  # noqa: E402
from sftkit.train import blockattn  # noqa: E402


def _qkv(heads: int, kv: int, length: int, dim: int = 16, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(h, length, dim, generator=g).to(dtype).requires_grad_() for h in (heads, kv, kv)]


def _reference(q, k, v, scale):
    """fp32 SDPA with the keys and values repeated per query group, and its gradients."""
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = sdpa(ref[0][None], ref[1][None], ref[2][None], is_causal=True, scale=scale,
               enable_gqa=q.shape[0] != k.shape[0])[0]
    return out, ref


@pytest.mark.parametrize("length", [1, 5, blockattn.ROWS - 1, blockattn.ROWS, blockattn.ROWS + 1, 300])
@pytest.mark.parametrize(("heads", "kv"), [(6, 2), (4, 4), (3, 1)])
def test_equals_sdpa_in_fp32(length, heads, kv):
    q, k, v = _qkv(heads, kv, length)
    grad = torch.randn(heads, length, q.shape[-1], generator=torch.Generator().manual_seed(9))
    out = blockattn.attention(q, k, v, 0.3, torch.float32)
    out.backward(grad)
    ref_out, ref = _reference(q, k, v, 0.3)
    ref_out.backward(grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for mine, theirs, name in zip((q, k, v), ref, "qkv", strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_bf16_is_as_close_to_fp32_as_torchs_own_kernel():
    q, k, v = _qkv(6, 2, 2 * blockattn.ROWS + 37, dim=32, dtype=torch.bfloat16, seed=3)
    grad = torch.randn(6, q.shape[1], 32, generator=torch.Generator().manual_seed(4))
    ref_out, ref = _reference(q, k, v, 32**-0.5)
    ref_out.backward(grad)
    errors = {}
    for name, fn in {"blocks": lambda: blockattn.attention(q, k, v, 32**-0.5, torch.bfloat16),
                     "torch": lambda: sdpa(q[None], k[None], v[None], is_causal=True, enable_gqa=True)[0]}.items():
        for t in (q, k, v):
            t.grad = None
        out = fn()
        out.backward(grad.to(torch.bfloat16))
        errors[name] = [(out.float() - ref_out).abs().max().item()] + [
            (t.grad.float() - r.grad).abs().max().item() for t, r in zip((q, k, v), ref, strict=True)]
    for mine, theirs in zip(errors["blocks"], errors["torch"], strict=True):
        assert mine <= 2 * theirs + 1e-3, errors


def test_strided_views_and_mixed_input_dtypes():
    """Segments are views into a packed row; under autocast q and k arrive fp32 (RoPE) and v bf16."""
    q_row, k_row, v_row = (t.detach() for t in _qkv(4, 2, 50))
    q = q_row[:, 20:45].requires_grad_()
    k = k_row[:, 20:45].requires_grad_()
    v = v_row[:, 20:45].to(torch.bfloat16).requires_grad_()
    assert not q.is_contiguous()
    out = blockattn.attention(q, k, v, 0.25, torch.bfloat16)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert (q.grad.dtype, k.grad.dtype, v.grad.dtype) == (torch.float32, torch.float32, torch.bfloat16)
    ref_out, _ = _reference(q, k, v.float(), 0.25)
    torch.testing.assert_close(out.float(), ref_out, rtol=0.05, atol=0.05)


def test_fits_bounds_the_kept_probabilities():
    assert blockattn.fits(9, 1024, torch.bfloat16)  # the bundled model at its usual cutoff
    assert not blockattn.fits(32, 4096, torch.bfloat16)
    longest = max(n for n in range(64, 8192, 64) if blockattn.fits(32, n, torch.bfloat16))
    assert block_probs_bytes(32, longest, 2) <= blockattn.MAX_KEPT_BYTES < block_probs_bytes(32, longest + 64, 2)
    assert block_probs_bytes(9, 256, 2) == 9 * 2 * (128 * 128 + 128 * 256)


def test_segment_attention_uses_blocks_on_cpu_and_sdpa_beyond(monkeypatch):
    from sftkit.train import attention

    calls = []
    real = blockattn.attention
    monkeypatch.setattr(blockattn, "attention", lambda *a: calls.append(a[0].shape[1]) or real(*a))
    module = torch.nn.Module().train()
    q, k, v = (t.detach()[None] for t in _qkv(4, 2, 30))
    pos = torch.tensor([[*range(10), *range(20)]])
    out, _ = attention.segment_attention(module, q, k, v, None, position_ids=pos)
    assert calls == [10, 20]
    calls.clear()
    monkeypatch.setattr(blockattn, "MAX_KEPT_BYTES", block_probs_bytes(4, 15, 4))  # 10 tokens fit, 20 not
    again, _ = attention.segment_attention(module, q, k, v, None, position_ids=pos)
    assert calls == [10]
    torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-5)
    calls.clear()
    torch.manual_seed(0)
    attention.segment_attention(module, q, k, v, None, dropout=0.1, position_ids=pos)
    assert calls == []  # attention dropout: torch's kernel draws it


def test_the_estimator_counts_what_it_keeps():
    """The probabilities autograd keeps are the bytes the estimate counts (and uses for the bound)."""
    for length in (100, 128, 300):
        q, k, v = _qkv(4, 2, length, dtype=torch.bfloat16)
        out = blockattn.attention(q, k, v, 0.25, torch.bfloat16)
        probs = out.grad_fn.saved_tensors[4:]
        assert sum(p.numel() * p.element_size() for p in probs) == block_attention_bytes(4, length, 2)
    assert block_attention_bytes(32, 4096, 2) == 0 < block_probs_bytes(32, 4096, 2)  # past the bound: SDPA
