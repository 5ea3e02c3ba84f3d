"""The engine on a device with limited memory: the batch size from free memory, and the halving on
out-of-memory. This machine has no GPU, so the out-of-memory error is injected by a thin wrapper
around the real tiny model (it raises ``torch.OutOfMemoryError``, what ``torch.cuda.OutOfMemoryError``
is, when a forward pass holds more rows than its "card" fits); everything else is the real engine."""

from __future__ import annotations

import logging

import pytest
import torch

from sftkit.core.conversation import Conversation
from sftkit.core.errors import DoesNotFit
from sftkit.infer import memory
from sftkit.infer.batcher import Batcher
from sftkit.infer.engine import Engine, GenParams, build_renderer

PROMPTS = ["Hi", "What is the capital of France? One word.", "1 2 3 4", "你好,请介绍一下你自己。",
           "A much longer prompt that forces the other rows in the batch to be left padded by many tokens.", "ok"]


class SmallCard(torch.nn.Module):
    """The real model, except that a forward pass over more than ``rows`` rows runs out of memory
    (after ``after`` forward passes have gone through: an error mid-decode, not only at prefill)."""

    def __init__(self, model: torch.nn.Module, rows: int, after: int = 0) -> None:
        super().__init__()
        self.inner, self.rows, self.after = model, rows, after
        self.config = model.config
        self.calls = self.raised = 0
        self.batch_sizes: list[int] = []

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, **kw):
        self.calls += 1
        if input_ids.shape[0] > self.rows and self.calls > self.after:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batch_sizes.append(input_ids.shape[0])
        return self.inner(input_ids=input_ids, logits_to_keep=logits_to_keep, **kw)


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    """The tiny architecture with larger random weights, so every prompt gets its own answer."""
    from transformers import AutoConfig, LlamaForCausalLM

    from sftkit.hub.models import load_tokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(tiny_model_dir, initializer_range=0.1)
    tok = load_tokenizer(tiny_model_dir)
    return LlamaForCausalLM(cfg).eval(), tok, build_renderer(tok)


def engine(parts, model=None, batch_size: int = 8) -> Engine:
    m, tok, renderer = parts
    return Engine(model or m, tok, renderer, batch_size=batch_size)


def prompts(e: Engine) -> list[str]:
    return [e.prompt_for(Conversation.from_messages([{"role": "user", "content": p}])) for p in PROMPTS]


@pytest.fixture(scope="module")
def reference(parts):
    """What the unconstrained engine answers (12 tokens, greedy), and with stops ending rows early."""
    e = engine(parts)
    return e.generate(prompts(e), GenParams(max_new_tokens=12))


def test_kv_formula(parts):
    m, _, _ = parts
    # 2 layers x 2 kv heads x head_dim 16 x 2 (K and V) x 4 bytes (fp32)
    assert memory.kv_bytes_per_token(m) == 2 * 2 * 16 * 2 * 4
    assert memory.rows_that_fit(10_000_000, 512, 100, limit=64) == 64  # 0.5 x 10 MB / 51.2 KB = 97 rows
    assert memory.rows_that_fit(1_000_000, 512, 100, limit=64) == 9  # 0.5 x 1 MB / 51.2 KB = 9.8
    assert memory.rows_that_fit(10, 512, 100, limit=64) == 1  # never less than one row
    assert memory.rows_that_fit(None, 512, 100, limit=64) == 64  # the CPU: batch_size decides


def test_batch_size_from_free_memory(parts, reference):
    e = engine(parts)
    per_row = memory.kv_bytes_per_token(e.model) * (max(len(e._encode(p)) for p in prompts(e)) + 12)
    e.free_memory = lambda _dev: int(per_row * 2 / memory.KV_SHARE) + 1  # room for two rows' KV cache
    got = e.generate(prompts(e), GenParams(max_new_tokens=12))
    assert e.stats.largest_batch == 2
    assert [r.token_ids for r in got] == [r.token_ids for r in reference]


def test_out_of_memory_halves_the_batch_and_answers_every_prompt(parts, reference, caplog):
    card = SmallCard(parts[0], rows=3)
    e = engine(parts, card)
    with caplog.at_level(logging.WARNING, logger="sftkit.infer.engine"):
        got = e.generate(prompts(e), GenParams(max_new_tokens=12))
    assert card.raised == 1  # 6 rows -> two batches of 3
    assert max(card.batch_sizes) == 3 and e.max_rows == 3
    assert e.stats.snapshot()["oom_halvings"] == 1 and e.stats.snapshot()["batch_cap"] == 3
    assert "out of memory on cpu with a batch of 6 prompts: retrying them in batches of 3" in caplog.text
    assert [r.token_ids for r in got] == [r.token_ids for r in reference]  # nothing lost, nothing changed
    assert [r.text for r in got] == [r.text for r in reference]
    card.raised = 0
    e.generate(prompts(e), GenParams(max_new_tokens=4))
    assert card.raised == 0  # the halved size is kept for later batches


def test_out_of_memory_mid_decode_continues_where_rows_were(parts, reference):
    card = SmallCard(parts[0], rows=3, after=5)  # prefill and four decode steps fit, then the card is full
    e = engine(parts, card)
    got = e.generate(prompts(e), GenParams(max_new_tokens=12))
    assert card.raised == 1 and e.max_rows == 3
    assert [r.token_ids for r in got] == [r.token_ids for r in reference]
    assert [r.completion_tokens for r in got] == [r.completion_tokens for r in reference]
    assert e.stats.completion_tokens == sum(r.completion_tokens for r in got)  # no token counted twice


def test_out_of_memory_in_shared_streams(parts, reference):
    card = SmallCard(parts[0], rows=3, after=4)
    e = engine(parts, card)
    multi = e.stream_many(prompts(e), GenParams(max_new_tokens=12))
    texts = [""] * len(PROMPTS)
    while (step := multi.step()) is not None:
        for i, delta in step:
            texts[i] += delta
    assert card.raised == 1
    assert texts == [r.text for r in reference]  # every delta once, in order
    assert [multi.result(i).token_ids for i in range(len(PROMPTS))] == [r.token_ids for r in reference]


def test_server_batches_survive_out_of_memory(parts, reference):
    """The server's shared batches go through the same engine: every request is answered."""
    card = SmallCard(parts[0], rows=2)
    e = engine(parts, card, batch_size=16)
    b = Batcher(e, max_batch=16, wait_s=0.05).start()
    try:
        futures = [b.submit([p], GenParams(max_new_tokens=12)) for p in prompts(e)]
        got = [f.result(120)[0] for f in futures]
    finally:
        b.stop()
    assert card.raised >= 1 and b.stats["errors"] == 0
    assert [r.token_ids for r in got] == [r.token_ids for r in reference]


def test_one_prompt_that_does_not_fit_is_a_clear_error(parts):
    e = engine(parts, SmallCard(parts[0], rows=0))
    with pytest.raises(DoesNotFit, match="out of memory on cpu decoding a single prompt"):
        e.generate(prompts(e)[:1], GenParams(max_new_tokens=4))
    with pytest.raises(DoesNotFit):
        list(e.stream(prompts(e)[0], GenParams(max_new_tokens=4)))


def test_other_errors_are_not_taken_for_out_of_memory(parts):
    class Broken(SmallCard):
        def forward(self, input_ids, logits_to_keep=0, **kw):
            raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")

    e = engine(parts, Broken(parts[0], rows=8))
    with pytest.raises(RuntimeError, match="CUBLAS"):
        e.generate(prompts(e), GenParams(max_new_tokens=4))
    assert e.max_rows is None
