"""Segment attention (sftkit.train.attention) equals transformers' sdpa with the block-diagonal mask, in value
and in gradient, for packed and right-padded training batches; evaluation falls back to sdpa."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sftkit.train import attention  # noqa: E402
from sftkit.train.collate import Collator  # noqa: E402

VOCAB = 300


def _model(family: str, attn: str):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if family == "llama":
        cfg = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.Qwen2Config(**common, use_sliding_window=False)
        cls = transformers.Qwen2ForCausalLM
    cfg.use_cache = False
    model = cls(cfg)
    model.set_attn_implementation(attention.register() if attn == "segments" else attn)
    return model


def _rows(lengths: list[list[int]]) -> list[dict[str, list[int]]]:
    """Packed rows: each inner list is the example lengths of one row."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for row in lengths:
        ids, pos = [], []
        for n in row:
            ids += torch.randint(3, VOCAB, (n,), generator=g).tolist()
            pos += list(range(n))
        rows.append({"input_ids": ids, "labels": ids, "position_ids": pos})
    return rows


def _loss_and_grads(model, batch):
    model.train()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_rows_equal_the_block_diagonal_mask(family):
    batch = Collator(pad_id=0)(_rows([[5, 17, 9], [31], [12, 12, 3, 1]]))  # uneven rows: padding too
    ref_logits, ref_grads = _loss_and_grads(_model(family, "sdpa"), batch)
    logits, grads = _loss_and_grads(_model(family, "segments"), batch)
    real = batch["labels"] != -100
    torch.testing.assert_close(logits[real], ref_logits[real], rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_packed_row_never_attends_across_examples():
    """Changing the first example of a row leaves the second example's logits as they were."""
    model = _model("llama", "segments")
    model.train()
    rows = _rows([[8, 10]])
    a = Collator(pad_id=0)(rows)
    rows[0]["input_ids"][:8] = [7] * 8
    b = Collator(pad_id=0)(rows)
    with torch.no_grad():
        la, lb = model(**a).logits, model(**b).logits
    torch.testing.assert_close(la[0, 8:18], lb[0, 8:18])
    assert not torch.allclose(la[0, :8], lb[0, :8])


def test_right_padded_rows_equal_sdpa_with_the_padding_mask():
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in _rows([[21], [6], [13]])]
    batch = Collator(pad_id=0)(rows)
    ref_logits, ref_grads = _loss_and_grads(_model("llama", "sdpa"), batch)
    logits, grads = _loss_and_grads(_model("llama", "segments"), batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], ref_logits[real], rtol=1e-4, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_evaluation_with_left_padding_falls_back_to_sdpa():
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    outs = []
    for attn in ("sdpa", "segments"):
        model = _model("llama", attn).eval()
        with torch.no_grad():
            outs.append(model(input_ids=ids, attention_mask=mask).logits)
    torch.testing.assert_close(outs[1][mask.bool()], outs[0][mask.bool()])


def test_segment_lengths():
    assert attention._segment_lengths([0, 1, 2, 0, 1, 0]) == [3, 2, 1]
    assert attention._segment_lengths([3, 4, 0, 1]) == [2, 2]  # a row that starts mid-sequence
    assert attention._segment_lengths([0]) == [1]


def test_supports_only_plain_attention():
    assert attention.supports(transformers.LlamaConfig(), 1024)
    assert attention.supports(transformers.MistralConfig(sliding_window=None), 1024)
    assert not attention.supports(transformers.MistralConfig(sliding_window=512), 1024)
    assert attention.supports(transformers.MistralConfig(sliding_window=4096), 1024)
    assert not attention.supports(transformers.Gemma2Config(), 1024)
    assert not attention.supports(transformers.GPT2Config(), 1024)
