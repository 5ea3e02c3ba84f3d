"""``--engine vllm``: refused here with one sentence (no vllm, no GPU); the adapter code is
driven with a stand-in for the ``vllm`` module at its boundary (``LLM.generate`` decoding
greedily with the tiny model), so prompts, stops, LoRA requests and results are checked."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from typing import ClassVar

import pytest
import torch
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.hub.device import Capabilities

GPU = Capabilities(cuda=True, capability=(8, 0), bf16=True, packages=frozenset({"vllm"}))


def test_eval_and_serve_refuse_without_vllm_or_gpu(tiny_model_dir, tmp_path):
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vllm and a GPU are here")
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "你好"},
                                             {"role": "assistant", "content": "你好！"}]}, ensure_ascii=False))
    for args in (["eval", str(tiny_model_dir), "--data", str(data), "--engine", "vllm"],
                 ["serve", str(tiny_model_dir), "--engine", "vllm"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "--engine vllm" in r.output and "Traceback" not in r.output, r.output


class _Completion:
    def __init__(self, text, token_ids, finish_reason):
        self.text, self.token_ids, self.finish_reason = text, token_ids, finish_reason


class FakeLLM:
    """vllm.LLM's generate() contract, decoding greedily with the transformers model."""

    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, model, tokenizer, seed=0, **kw):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.kw, self.requests = kw, []
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tok = AutoTokenizer.from_pretrained(tokenizer)
        FakeLLM.instances.append(self)

    @torch.no_grad()
    def generate(self, prompts, sp, lora_request=None, use_tqdm=True):
        self.requests.append(lora_request)
        outs = []
        for p in prompts:
            ids, new = list(p["prompt_token_ids"]), []
            finish = "length"
            for _ in range(sp.max_tokens):
                nxt = int(self.model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt in sp.stop_token_ids:
                    new.append(nxt)
                    finish = "stop"
                    break
                new.append(nxt)
            text = self.tok.decode([t for t in new if t not in sp.stop_token_ids], skip_special_tokens=True)
            outs.append(types.SimpleNamespace(outputs=[_Completion(text, new, finish)]))
        return outs


class FakeSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, i, path: ("lora", name, i, path)
    for name, mod in (("vllm", vllm), ("vllm.lora", types.ModuleType("vllm.lora")), ("vllm.lora.request", lora)):
        monkeypatch.setitem(sys.modules, name, mod)
    FakeLLM.instances.clear()
    return vllm


@pytest.fixture
def lora_run(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=12, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    run = tmp_path / "run"
    model.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(f"model:\n  name_or_path: {tiny_model_dir}\n")
    return run


def test_vllm_sides_match_the_builtin_engine(fake_vllm, lora_run, tiny_model_dir):
    from sftkit.evaluate.runner import evaluate_sides, load_conversations
    from sftkit.evaluate.runner import load_vllm_sides as load_sides
    from sftkit.infer.engine import Engine, GenParams

    sides = load_sides(str(lora_run), None, caps=GPU)
    llm = FakeLLM.instances[0]
    assert llm.kw == {"enable_lora": True, "max_lora_rank": 16}  # r=12 rounds up to a rank vLLM accepts
    assert [s.name for s in sides] == ["model", "baseline"]

    base = Engine.from_ref(str(tiny_model_dir))
    conv_file = lora_run / "t.jsonl"
    conv_file.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                          {"role": "assistant", "content": "好"}]},
                                            ensure_ascii=False) + "\n" for q in ("你好", "What is 2+2?")))
    convs = load_conversations(conv_file)
    prompts = [base.prompt_for(c) for c in convs]
    params = GenParams(max_new_tokens=6)
    ours = sides[1].engine.generate(prompts, params)  # the base model side: no LoRA request
    assert llm.requests[-1] is None
    want = base.generate(prompts, params)
    assert [r.token_ids for r in ours] == [r.token_ids for r in want]
    assert [r.finish_reason for r in ours] == [r.finish_reason for r in want]
    sp = sides[0].engine.sampling(params)
    assert sp.temperature == 0.0 and sp.top_k == -1 and base.tokenizer.eos_token_id in sp.stop_token_ids

    result, rows = evaluate_sides(sides, convs, ["exact_match"], max_new_tokens=4, forgetting=False,
                                  latency_samples=1)
    assert result["model"]["loss"] is None and result["model"]["ppl"] is None  # not computed with vLLM
    assert "exact_match" in result["model"] and "exact_match" in result["baseline"] and len(rows) == 2
    lora_req = next(r for r in llm.requests if r is not None)
    assert lora_req[0] == "lora" and lora_req[3] == str((lora_run / "adapter").resolve())
