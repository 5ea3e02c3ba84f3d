"""``eval.generate_every`` during training: generation runs on the model being trained, where training
put it, with its adapter live and under the training's mixed precision."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sftkit.core.conversation import Conversation
from sftkit.infer.engine import Engine, GenParams, build_renderer
from sftkit.train.gen_eval import GenerationEval

USERS = ["Hello there", "What is two plus two?", "Name a colour."]


@pytest.fixture
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(AutoConfig.from_pretrained(tiny_model_dir, initializer_range=0.1))
    return get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                           init_lora_weights=False))


@pytest.mark.parametrize("bf16", [False, True])
def test_generation_during_training_uses_the_live_adapter(lora_model, tokenizer, tmp_path, bf16):
    renderer = build_renderer(tokenizer)
    engine = Engine(lora_model.eval(), tokenizer, renderer)
    prompts = [engine.prompt_for(Conversation.from_messages([{"role": "user", "content": u}])) for u in USERS]
    params = GenParams(max_new_tokens=6)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        tuned = [r.text for r in engine.generate(prompts, params)]
        with lora_model.disable_adapter():
            base = [r.text for r in engine.generate(prompts, params)]
    assert tuned != base, "the adapter must change the answers for this test to mean anything"
    # references = what the model answers with its adapter: a perfect score only if generation used it
    convs = [Conversation.from_messages([{"role": "user", "content": u}, {"role": "assistant", "content": t}])
             for u, t in zip(USERS, tuned, strict=True)]
    out = tmp_path / "metrics.jsonl"
    cb = GenerationEval(renderer, convs, ["exact_match"], every=1, max_new_tokens=6, path=out)
    lora_model.train()
    cb.on_step_end(SimpleNamespace(bf16=bf16, fp16=False), SimpleNamespace(global_step=1, is_world_process_zero=True),
                   None, model=lora_model)
    assert lora_model.training  # back to training mode afterwards
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["step"] == 1 and row["gen_exact_match"] == 1.0
