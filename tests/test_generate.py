"""The generation engine: batching must not change greedy output, stops work,
sampling is reproducible."""

from __future__ import annotations

import pytest

from sftkit.core.conversation import Conversation
from sftkit.infer.engine import Engine, GenParams, build_renderer

PROMPTS = [
    "Hi",
    "What is the capital of France? Please answer in one word.",
    "1 2 3 4",
    "A much longer prompt that forces the other rows in the batch to be left padded by many tokens.",
    "你好,请介绍一下你自己。",
]


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    """The tiny model's architecture with larger random weights: at the default
    init scale every prompt decodes to the same repeated token, which would make
    "batched equals single" pass trivially. Here outputs differ per prompt."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from sftkit.hub.models import load_tokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(tiny_model_dir, initializer_range=0.1)
    tok = load_tokenizer(tiny_model_dir)
    return Engine(LlamaForCausalLM(cfg).eval(), tok, build_renderer(tok), batch_size=8)


def _chat_prompts(engine: Engine) -> list[str]:
    return [engine.prompt_for(Conversation.from_messages([{"role": "user", "content": p}])) for p in PROMPTS]


def test_batched_equals_single_greedy(tiny_engine):
    prompts = _chat_prompts(tiny_engine)
    params = GenParams(max_new_tokens=12)
    batched = tiny_engine.generate(prompts, params)
    assert len({tuple(r.token_ids) for r in batched}) == len(prompts), "outputs must depend on the prompt"
    for prompt, b in zip(prompts, batched, strict=True):
        (single,) = tiny_engine.generate([prompt], params)
        assert b.token_ids == single.token_ids
        assert b.text == single.text
        assert b.prompt_tokens == single.prompt_tokens


def test_rows_finishing_early_leave_the_batch(tiny_engine):
    """A stop string that ends some rows early: the rest of the batch (with the
    finished rows' cache removed) must still decode exactly as alone."""
    prompts = _chat_prompts(tiny_engine)
    free = tiny_engine.generate(prompts, GenParams(max_new_tokens=12))
    stop = free[0].text[2:4]
    params = GenParams(max_new_tokens=12, stop=[stop])
    batched = tiny_engine.generate(prompts, params)
    assert len({r.completion_tokens for r in batched}) > 1, "rows should finish at different steps"
    for prompt, b in zip(prompts, batched, strict=True):
        (single,) = tiny_engine.generate([prompt], params)
        assert (b.token_ids, b.text, b.finish_reason) == (single.token_ids, single.text, single.finish_reason)


def test_batched_equals_hf_generate(tiny_engine):
    """The hand-written loop decodes what transformers' own greedy search decodes."""
    import torch

    prompt = _chat_prompts(tiny_engine)[1]
    (ours,) = tiny_engine.generate([prompt], GenParams(max_new_tokens=8))
    ids = torch.tensor([tiny_engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    ref = tiny_engine.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, eos_token_id=None
    )
    assert ours.token_ids == ref[0, ids.shape[1] :].tolist()[: len(ours.token_ids)]


def test_max_new_tokens_and_counts(tiny_engine):
    res = tiny_engine.generate(["Hello there", "x"], GenParams(max_new_tokens=5))
    for r in res:
        assert r.completion_tokens == len(r.token_ids) <= 5
        assert r.prompt_tokens > 0
        assert r.finish_reason in ("stop", "length")
        assert 0 < r.first_token_s <= r.total_s
        if r.finish_reason == "length":
            assert r.completion_tokens == 5


def test_stop_string_cuts_text(tiny_engine):
    prompt = _chat_prompts(tiny_engine)[0]
    (free,) = tiny_engine.generate([prompt], GenParams(max_new_tokens=10))
    assert len(free.text) > 2
    stop = free.text[1:3]  # a string the model is known to produce
    (cut,) = tiny_engine.generate([prompt], GenParams(max_new_tokens=10, stop=[stop]))
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert free.text.startswith(cut.text)
    assert cut.completion_tokens <= free.completion_tokens


def test_end_of_turn_token_stops(tiny_engine):
    eot = tiny_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eot in tiny_engine.stop_ids  # the template's stop string, mapped to its token id
    prompt = _chat_prompts(tiny_engine)[4]
    (free,) = tiny_engine.generate([prompt], GenParams(max_new_tokens=8))
    # Pretend the 4th generated token is an end-of-turn token: decoding must stop
    # right there, keep the id in token_ids and leave it out of the text.
    marker = free.token_ids[3]
    tiny_engine.stop_ids.add(marker)
    try:
        (cut,) = tiny_engine.generate([prompt], GenParams(max_new_tokens=8))
    finally:
        tiny_engine.stop_ids.discard(marker)
    first = free.token_ids.index(marker)
    assert cut.token_ids == free.token_ids[: first + 1]
    assert cut.finish_reason == "stop"
    assert cut.text == tiny_engine.tokenizer.decode(free.token_ids[:first])


def test_sampling_reproducible_with_seed(tiny_engine):
    prompts = _chat_prompts(tiny_engine)[:3]
    p = GenParams(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, repetition_penalty=1.1, seed=7)
    a = tiny_engine.generate(prompts, p)
    b = tiny_engine.generate(prompts, p)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    c = tiny_engine.generate(prompts, GenParams(max_new_tokens=8, temperature=1.0, seed=8))
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_stream_matches_generate(tiny_engine):
    prompt = _chat_prompts(tiny_engine)[1]
    p = GenParams(max_new_tokens=10, stop=["zz-never"])
    stream = tiny_engine.stream(prompt, p)
    deltas = list(stream)
    (full,) = tiny_engine.generate([prompt], p)
    assert "".join(deltas) == full.text
    assert len(deltas) > 1
    assert stream.result is not None and stream.result.token_ids == full.token_ids
    assert stream.result.finish_reason == full.finish_reason


def test_stream_never_shows_a_stop_string(tiny_engine):
    prompt = _chat_prompts(tiny_engine)[3]
    (free,) = tiny_engine.generate([prompt], GenParams(max_new_tokens=10))
    stop = free.text[4:9]
    p = GenParams(max_new_tokens=10, stop=[stop])
    deltas = list(tiny_engine.stream(prompt, p))
    (cut,) = tiny_engine.generate([prompt], p)
    assert "".join(deltas) == cut.text == free.text[: free.text.find(stop)]


def test_params_validated():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenParams(top_p=0)


@pytest.mark.integration
def test_bundled_batched_equals_single(bundled_path):
    from sftkit.hub.models import load_model, load_tokenizer, resolve

    resolved = resolve(str(bundled_path))
    tok = load_tokenizer(resolved.path)
    engine = Engine(load_model(resolved), tok, build_renderer(tok), batch_size=8)
    prompts = _chat_prompts(engine)
    params = GenParams(max_new_tokens=16)
    batched = engine.generate(prompts, params)
    for prompt, b in zip(prompts, batched, strict=True):
        (single,) = engine.generate([prompt], params)
        assert b.token_ids == single.token_ids, prompt
    assert any(r.finish_reason == "stop" or r.text.strip() for r in batched)


def test_stream_many_equals_one_at_a_time(tiny_engine):
    """Streams decoded as one batch give each client exactly its own answer, with its own limit."""
    prompts = _chat_prompts(tiny_engine)
    limits = [3, 9, 6, 12, 5]
    p = GenParams(max_new_tokens=12)
    multi = tiny_engine.stream_many(prompts, p, limits)
    texts = [""] * len(prompts)
    steps = 0
    while (step := multi.step()) is not None:
        steps += 1
        for i, d in step:
            texts[i] += d
    for i, (prompt, n) in enumerate(zip(prompts, limits, strict=True)):
        (alone,) = tiny_engine.generate([prompt], GenParams(max_new_tokens=n))
        assert texts[i] == alone.text and multi.result(i).token_ids == alone.token_ids
    assert steps <= max(limits)  # one forward pass per step for all of them


def test_aborted_stream_row_leaves_the_batch(tiny_engine):
    prompts = _chat_prompts(tiny_engine)[:2]
    multi = tiny_engine.stream_many(prompts, GenParams(max_new_tokens=10, stop=["zz-never"]))
    multi.step()
    multi.abort(0)
    while multi.step() is not None:
        pass
    assert multi.result(0).finish_reason == "abort" and multi.result(0).completion_tokens == 2
    (alone,) = tiny_engine.generate(prompts[1:], GenParams(max_new_tokens=10, stop=["zz-never"]))
    assert multi.result(1).token_ids == alone.token_ids
