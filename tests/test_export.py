"""``sft export``: merge a (tiny, non-trivial) LoRA run into a standalone folder and
prove it is the same model: logits, plain ``from_pretrained``, template, stops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from sftkit.cli.infer import load_engine

TEMPLATE = "qwen2_chatml"  # two stop strings (<|im_end|>, <|endoftext|>), both single tokens here
PROBES = ["Hello there, how are you?", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]


def _write_run_files(run: Path, base: Path, method: str) -> None:
    cfg = {"name": "tiny", "model": {"name_or_path": str(base), "dtype": "float32"}, "template": TEMPLATE,
           "method": {"type": method}, "data": {"train": [{"path": "train.jsonl"}]}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "train_summary.json").write_text(json.dumps({"global_step": 3, "train_loss": 1.234, "train_seconds": 1.0}))
    (run / "eval.json").write_text(json.dumps({"n": 2, "model": {"accuracy": 0.5}, "baseline": {"accuracy": 0.0}}))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, tokenizer) -> Path:
    """A run folder as `sft train` writes it, with LoRA B weights perturbed so the
    adapter actually changes the model (fresh LoRA B is zero: merging would be a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("lora-run")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    _write_run_files(run, tiny_model_dir, "lora")
    return run


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory) -> Path:
    from sftkit.export.merge import export_run

    out = tmp_path_factory.mktemp("exports") / "tiny-merged"
    res = export_run(lora_run, out, log=lambda _m: None)
    assert res.ok and res.out == out
    return out


def _logits(model, tok) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(**tok(p, return_tensors="pt", add_special_tokens=False)).logits[0].float() for p in PROBES]


def test_merged_equals_base_plus_adapter(lora_run, exported, tiny_model_dir, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_logits = _logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    want = _logits(tuned, tokenizer)
    assert max(float((a - b).abs().max()) for a, b in zip(base_logits, want, strict=True)) > 1e-2, \
        "the adapter must change the model, or this test proves nothing"
    # Plain transformers, no peft, no sftkit: a standalone model.
    merged = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    got = _logits(merged, tokenizer)
    assert max(float((a - b).abs().max()) for a, b in zip(want, got, strict=True)) < 1e-4
    assert not (exported / "adapter_config.json").exists()
    assert list(exported.glob("*.safetensors"))


def test_export_files_template_and_stops(exported):
    from transformers import AutoTokenizer

    from sftkit.core.conversation import Conversation
    from sftkit.templates.registry import load_template

    tok = AutoTokenizer.from_pretrained(exported)
    tpl = load_template(TEMPLATE)
    gen = json.loads((exported / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    for stop in tpl.stop_strings:
        assert tok.convert_tokens_to_ids(stop) in eos, f"{stop} must stop generation"
    conv = Conversation.from_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                                       {"role": "user", "content": "Bye"}])
    want = "".join(s.text for s in tpl.segments(conv, add_generation_prompt=True))
    got = tok.apply_chat_template([m.to_dict() for m in conv.messages], tokenize=False, add_generation_prompt=True)
    assert got == want, "the exported chat_template must render exactly like the training template"
    assert (exported / "sftkit_template.json").is_file()
    card = (exported / "README.md").read_text()
    assert "train_loss | 1.234" in card and "accuracy" in card and "max |logit diff|" in card


def test_chat_and_server_accept_run_and_export(lora_run, exported):
    import subprocess
    import sys

    outs = []
    for ref in (lora_run, exported):
        # A subprocess: chat.answer binds sys.stdout at import time, which CliRunner cannot capture.
        r = subprocess.run([sys.executable, "-m", "sftkit.cli", "chat", str(ref), "--prompt", "Hi",
                            "--max-new-tokens", "6"], capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout)
    assert outs[0] == outs[1], "the merged model answers like base+adapter (greedy)"

    openai = pytest.importorskip("openai")
    from sftkit.hub.models import served_name
    from sftkit.infer.server import create_app
    from test_serve import LiveServer

    answers = []
    for ref in (lora_run, exported):
        engine = load_engine(str(ref))
        name = served_name(str(ref))
        with LiveServer(create_app(engine, name, max_tokens_limit=16)) as srv:
            client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
            r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=6, temperature=0)
            answers.append(r.choices[0].message.content)
    assert answers[0] == answers[1]
    assert answers[0] + "\n" == outs[0]


def _export(*args: str):
    from sftkit.cli import app

    return CliRunner().invoke(app, ["export", *args])


def test_export_cli_quantizer_missing_and_errors(lora_run, tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_QUANTIZE", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no llama-quantize anywhere
    out = tmp_path / "m"
    r = _export(str(lora_run), "--out", str(out), "--gguf", "q4_k_m")
    assert r.exit_code == 2, r.output  # refused before the merge: nobody waits to learn this
    assert "llama-quantize" in r.output and "q8_0" in r.output and "Traceback" not in r.output
    assert not out.exists()
    r = _export(str(lora_run), "--out", str(out), "--ollama", "m")
    assert r.exit_code == 2 and "--gguf" in r.output
    r = _export(str(lora_run), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert (out / "config.json").is_file() and "merged vs base+adapter" in r.output
    r = _export(str(lora_run), "--out", str(out))
    assert r.exit_code == 2 and "--force" in r.output
    r = _export(str(tmp_path), "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "not a run folder" in r.output


def test_full_finetune_run_exports(tmp_path, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from sftkit.export.merge import export_run

    run = tmp_path / "full-run"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.1)
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    _write_run_files(run, tiny_model_dir, "full")
    res = export_run(run, tmp_path / "out", dtype="bf16", log=lambda _m: None)
    assert res.ok and res.kind == "full" and res.dtype == "bfloat16" and res.merge_diff is None
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.dtype == torch.bfloat16
    # A full-FT run folder is also served/chatted directly.
    assert load_engine(str(run)).generate(["Hi"])[0].completion_tokens > 0


def test_jinja_conversion_matches_every_shipped_template(tokenizer):
    from sftkit.templates.registry import load_template, shipped_names
    from sftkit.templates.to_jinja import json_to_jinja, verify

    for name in shipped_names():
        tpl = load_template(name)
        check = verify(tpl, json_to_jinja(tpl), tokenizer)
        assert not check.failed, (name, check.failed)
        assert check.passed
    broken = verify(load_template("chatml"), "{{ 'x' }}", tokenizer)
    assert not broken.basic_ok


def test_model_card_formats_both_columns(tmp_path):
    from sftkit.export.merge import ExportResult, RunInfo, model_card

    (tmp_path / "eval.json").write_text(json.dumps({"model": {"loss": 0.123456789}, "baseline": {"loss": 10.836133}}))
    info = RunInfo(tmp_path, tmp_path, tmp_path, "lora", None, {"method": {"type": "lora"}})
    res = ExportResult(tmp_path, "lora", "float32", "the tokenizer's own", [2], 1e-7, 1e-7, True)
    assert "| loss | 0.1235 | 10.84 |" in model_card(info, res, "out")
