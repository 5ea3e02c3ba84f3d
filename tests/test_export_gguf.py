"""``sft export --gguf`` / ``--ollama``: GGUF written with the ``gguf`` package, reloaded with
transformers and checked (exact against the same rounding, quality against the original), and an
Ollama Modelfile whose TEMPLATE renders what sftkit renders.

Unit tests use tiny random llama/qwen2 models with a tiny byte-level BPE tokenizer trained here
(a 49k vocabulary makes every GGUF reload parse ~100k metadata strings: seconds each); the
integration tests convert the bundled SmolLM2-135M (f16 and q8_0, one export each).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import pytest
import torch
import yaml

from sftkit.core.conversation import Conversation
from sftkit.core.errors import GgufNotWritten, RefusedPath, VerificationFailed
from sftkit.export import gguf as gg
from sftkit.export import gotemplate, ollama
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.registry import load_template

DEFAULT_SYSTEM = "You are a tiny test assistant."
CHATML_JINJA = (  # ChatML with a default system prompt, the shape of SmolLM2's own template
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TWO_TURN = [{"role": "user", "content": "如何查询用户余额？"},
            {"role": "assistant", "content": "请调用 getUserBalance(userId) 接口。"},
            {"role": "user", "content": "And {{ braces }}, \"quotes\" and `ticks`?"}]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}]
CORPUS = ["The capital of France is Paris.", "def add(a, b):\n    return a + b", "如何查询用户余额？请调用接口。",
          "emoji 🦙 ok\tTabs and  spaces", "Once upon a time, there lived 12345 llamas."]


def _quiet(_msg: str) -> None:
    pass


def _record(res: gg.GGUFResult) -> dict:
    return json.loads(res.verification_file.read_text(encoding="utf-8"))


def _fields(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _tensors(path: Path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def tiny_tok_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (GPT-2 style) of ~360 tokens with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML_JINJA
    out = tmp_path_factory.mktemp("tiny-tok")
    tok.save_pretrained(out)
    return out


def _tiny_model(out: Path, arch: str, tok_dir: Path, **kw) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    common = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
              "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    cls, cfg = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    model = cls(cfg(**common, **kw))
    with torch.no_grad():  # fresh biases are zero: make them matter, so a misplaced bias shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tiny_tok_dir) -> Path:
    """Untied, head_dim 32 != hidden/heads 16, q/k/v/o biases: every llama corner the writer has."""
    return _tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", tiny_tok_dir, head_dim=32,
                       attention_bias=True, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def llama_f32(tiny_llama, tmp_path_factory) -> gg.GGUFResult:
    return gg.export_gguf(tiny_llama, tmp_path_factory.mktemp("llama-f32"), "f32", log=_quiet)


# -- GGUF: exact round trips on tiny models ---------------------------------------------------


def test_llama_f32_round_trip_is_exact(llama_f32, tiny_llama):
    rec = _record(llama_f32)
    assert llama_f32.ok and llama_f32.path.name == f"{tiny_llama.name}-f32.gguf" and llama_f32.path.is_file()
    assert rec["exactness"]["max_abs_diff"] == 0.0 and rec["quality"]["max_abs_diff"] == 0.0
    assert rec["positions"] == 256 and rec["config"]["same"] and rec["tokenizer"]["ok"] and rec["metadata"]["ok"]
    # The q rows are stored in GGML's rope order (permuted), the untied lm_head as output.weight.
    from safetensors.torch import load_file

    hf = load_file(tiny_llama / "model.safetensors")
    t = _tensors(llama_f32.path)
    q = hf["model.layers.0.self_attn.q_proj.weight"].numpy()
    stored = t["blk.0.attn_q.weight"].data.reshape(q.shape)
    assert (stored == gg.model.permute(q, 4)).all() and not (stored == q).all()
    assert {"output.weight", "blk.1.attn_q.bias", "blk.1.attn_k.bias"} <= set(t)


def test_llama_metadata_carries_template_and_stops(llama_f32, tiny_tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    f = _fields(llama_f32.path)
    assert f["general.architecture"] == "llama" and f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.chat_template"] == CHATML_JINJA
    assert f["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert f["sftkit.stop_strings"] == ["<|im_end|>"]
    assert f["sftkit.stop_token_ids"] == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert f["tokenizer.ggml.pre"] == "gpt-2"  # an unknown vocabulary, named by its split regex
    assert f["llama.attention.key_length"] == 32 and f["llama.rope.dimension_count"] == 32
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert f["tokenizer.ggml.token_type"][end] == gguf.TokenType.CONTROL
    assert len(f["tokenizer.ggml.tokens"]) == len(tok)


def test_llama_q8_0_equals_the_same_rounding(tiny_llama, tmp_path):
    res = gg.export_gguf(tiny_llama, tmp_path, "q8_0", log=_quiet)
    rec = _record(res)
    assert res.ok and rec["exactness"]["max_abs_diff"] <= gg.common.EXACT_LIMIT
    assert rec["quality"]["max_abs_diff"] > 1e-4, "q8_0 must round something, or the exactness check proves nothing"
    t = _tensors(res.path)
    assert t["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert t["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert t["blk.0.attn_q.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert rec["tensor_types"] == {"Q8_0": 16, "F32": 13}  # 7 matrices x 2 layers + embd + output


def test_qwen2_round_trips_exactly_with_biases(tmp_path_factory, tiny_tok_dir):
    folder = _tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", tiny_tok_dir, tie_word_embeddings=True)
    for qtype in ("f32", "q8_0"):
        res = gg.export_gguf(folder, folder, qtype, log=_quiet)
        rec = _record(res)
        assert res.ok and rec["exactness"]["max_abs_diff"] <= gg.common.EXACT_LIMIT, rec["exactness"]
        assert rec["tokenizer"]["same_ids"], "Qwen2's split regex must survive (tokenizer.ggml.pre = qwen2)"
    f, t = _fields(res.path), _tensors(res.path)
    assert f["general.architecture"] == "qwen2" and f["tokenizer.ggml.pre"] == "qwen2"
    assert "blk.0.attn_q.bias" in t and "output.weight" not in t  # tied: llama.cpp reads token_embd


def _llama3_factors(theta: float, dim: int, factor: float, low: float, high: float, old_ctx: int) -> list[float]:
    """Llama 3.1's published rope scaling, as llama.cpp's rope_freqs divisors (written independently)."""
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def test_llama3_rope_writes_rope_freqs_and_verifies(tmp_path_factory, tiny_tok_dir):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    folder = _tiny_model(tmp_path_factory.mktemp("tiny-llama3"), "llama", tiny_tok_dir, rope_parameters=rope,
                         tie_word_embeddings=True)
    res = gg.export_gguf(folder, folder, "f16", log=_quiet)
    rec = _record(res)
    assert res.ok and rec["exactness"]["max_abs_diff"] <= gg.common.EXACT_LIMIT
    assert rec["config"]["reloaded_with_original_config"] == "rope_type llama3"
    got = _tensors(res.path)["rope_freqs.weight"].data
    want = _llama3_factors(500000.0, 16, 8.0, 1.0, 4.0, 64)
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert min(want) == 1.0 and max(want) == 8.0  # the test shape spans all three bands


def test_a_wrong_writer_fails_verification_and_is_kept_aside(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(gg.writer, "permute", lambda w, n_head: w)  # the classic bug: q/k left in HF order
    with pytest.raises(VerificationFailed, match="exactness") as e:
        gg.export_gguf(tiny_llama, tmp_path, "f32", log=_quiet)
    assert e.value.exit_code == 1
    name = f"{tiny_llama.name}-f32"
    assert (tmp_path / f"{name}.unverified.gguf").is_file() and not (tmp_path / f"{name}.gguf").exists()
    rec = json.loads((tmp_path / f"{name}.verification.json").read_text())
    assert not rec["ok"] and rec["exactness"]["max_abs_diff"] > 1e-3


# -- refusals, before any work --------------------------------------------------------------------


def _no_files(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def test_unsupported_architecture_rope_and_tokenizers_are_refused(tmp_path, tiny_tok_dir, tiny_llama):
    from transformers import LlamaConfig

    def refused(folder: Path, *words: str) -> None:
        out = tmp_path / f"out-{folder.name}"
        with pytest.raises(gg.GGUFError) as e:
            gg.export_gguf(folder, out, "q8_0", log=_quiet)
        assert all(w in str(e.value) for w in words), str(e.value)
        assert _no_files(out)

    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_tok_dir, gpt2)
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    refused(gpt2, "model_type 'gpt2'", "only llama, qwen2", "convert_hf_to_gguf.py")
    yarn = tmp_path / "yarn"
    shutil.copytree(tiny_tok_dir, yarn)
    LlamaConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}).save_pretrained(yarn)
    refused(yarn, "rope_type 'yarn'")
    spm = tmp_path / "spm"
    shutil.copytree(tiny_llama, spm)
    tj = json.loads((spm / "tokenizer.json").read_text())
    tj["model"]["byte_fallback"] = True
    (spm / "tokenizer.json").write_text(json.dumps(tj))
    refused(spm, "SentencePiece-style BPE", "byte-level BPE")
    (spm / "tokenizer.json").unlink()
    (spm / "tokenizer.model").write_bytes(b"\x00")
    refused(spm, "SentencePiece (tokenizer.model only)")
    with pytest.raises(gg.GGUFError, match="use one of f32, f16, bf16, q8_0"):
        gg.export_gguf(tiny_llama, tmp_path / "x", "q3_xs", log=_quiet)
    with pytest.raises(ollama.ModelfileError, match="not an Ollama model name"):
        gg.export_gguf(tiny_llama, tmp_path / "x", "f16", ollama_name="bad name!", log=_quiet)
    assert _no_files(tmp_path / "x")


def test_k_quants_are_refused_with_the_fix_without_llama_quantize(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("LLAMA_QUANTIZE", raising=False)
    for qtype in ("q4_k_m", "Q5_K_M"):
        with pytest.raises(gg.QuantizerMissing) as e:
            gg.export_gguf(tiny_llama, tmp_path / "out", qtype, log=_quiet)
        msg = str(e.value)
        assert "llama-quantize" in msg and "LLAMA_QUANTIZE=" in msg and "--gguf q8_0" in msg and "ollama create" in msg
        assert e.value.exit_code == 2
    assert _no_files(tmp_path / "out")


def test_k_quants_go_through_llama_quantize_from_our_f16(tiny_llama, tmp_path, monkeypatch):
    """llama.cpp is not installed here: a stand-in program records its arguments and copies the f16
    input; what is checked is sftkit's side (input, type name, verification, clean-up)."""
    argv_log = tmp_path / "argv.json"
    fake = tmp_path / "bin" / "llama-quantize"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, shutil, sys\n"
                    f"json.dump(sys.argv[1:], open({str(argv_log)!r}, 'w'))\n"
                    "shutil.copyfile(sys.argv[1], sys.argv[2])\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("LLAMA_QUANTIZE", str(fake))
    out = tmp_path / "out"
    res = gg.export_gguf(tiny_llama, out, "q4_k_m", log=_quiet)
    src, dst, kind = json.loads(argv_log.read_text())
    assert kind == "Q4_K_M" and "-f16." in Path(src).name and res.path == out / f"{tiny_llama.name}-q4_k_m.gguf"
    assert Path(dst).parent == out and not Path(src).exists()
    rec = _record(res)
    assert "skipped" in rec["exactness"] and rec["source_f16"]["exactness"]["max_abs_diff"] <= gg.common.EXACT_LIMIT
    assert sorted(p.name for p in out.iterdir()) == sorted([res.path.name, res.verification_file.name])


def test_existing_files_are_replaced_only_when_ours_and_forced(llama_f32, tiny_llama, tmp_path):
    out = llama_f32.path.parent
    with pytest.raises(RefusedPath, match="pass --force"):
        gg.export_gguf(tiny_llama, out, "f32", log=_quiet)
    foreign = tmp_path / f"{tiny_llama.name}-f32.gguf"
    foreign.write_bytes(b"someone else's")
    with pytest.raises(RefusedPath, match="sftkit did not write it"):
        gg.export_gguf(tiny_llama, tmp_path, "f32", force=True, log=_quiet)
    assert foreign.read_bytes() == b"someone else's"


# -- a run folder: HF export, GGUF and Modelfile -------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_tok_dir) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = _tiny_model(tmp_path_factory.mktemp("tiny-base"), "llama", tiny_tok_dir, tie_word_embeddings=True)
    run = tmp_path_factory.mktemp("run")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(run / "adapter")
    for f in tiny_tok_dir.iterdir():
        shutil.copy(f, run / "adapter" / f.name)
    cfg = {"name": "tiny", "model": {"name_or_path": str(base), "dtype": "float32"}, "template": "chatml",
           "method": {"type": "lora"}, "data": {"train": [{"path": "train.jsonl"}]}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def test_run_folder_exports_gguf_and_modelfile(lora_run, tmp_path):
    out = tmp_path / "tiny-export"
    res = gg.export_gguf(lora_run, out, "q8_0", ollama_name="tiny-chat:q8_0", log=_quiet)
    assert res.ok and (out / "config.json").is_file() and (out / "sftkit_template.json").is_file()
    assert res.export is not None and res.export.out == out and res.export.kind == "lora"
    assert res.path == out / "tiny-export-q8_0.gguf" and res.modelfile == out / "Modelfile"
    assert res.ollama_command == f"ollama create tiny-chat:q8_0 -f {out / 'Modelfile'}"
    f = _fields(res.path)
    assert "chatml" in f["tokenizer.chat_template"]  # the run's JSON template, as Jinja: not the base's
    assert f["sftkit.stop_strings"] == ["<|im_end|>"]
    mf = ollama.parse_modelfile(res.modelfile.read_text())
    assert mf["from"] == "./tiny-export-q8_0.gguf" and mf["parameters"]["stop"] == ["<|im_end|>"]
    assert "system" not in mf  # chatml has no default system prompt
    chatml = load_template("chatml")
    for msgs in (TWO_TURN, WITH_SYSTEM):
        assert ollama.ollama_prompt(mf, msgs) == _ours(chatml, msgs)


def test_a_run_whose_gguf_cannot_be_written_says_the_folder_is_fine(lora_run, tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise gg.GGUFError("simulated writer failure")

    monkeypatch.setattr(gg.exporter, "write_gguf", broken)
    out = tmp_path / "exp"
    with pytest.raises(GgufNotWritten, match="was exported and verified, but no GGUF was written") as e:
        gg.export_gguf(lora_run, out, "f16", log=_quiet)
    assert e.value.exit_code == 3 and (out / "config.json").is_file()


# -- the Modelfile renders what sftkit renders ------------------------------------------------------


def _ours(template, msgs) -> str:
    return "".join(s.text for s in template.segments(Conversation.from_messages(msgs), add_generation_prompt=True))


@pytest.fixture(scope="module")
def smollm2_template(tokenizer) -> HFChatTemplate:
    return HFChatTemplate(tokenizer)  # the bundled model's own Jinja template


@pytest.mark.parametrize("name", ["chatml", "qwen2_chatml", "llama3_instruct", "smollm2"])
@pytest.mark.parametrize("msgs", [TWO_TURN, WITH_SYSTEM], ids=["two-turn", "two-turn+system"])
def test_modelfile_template_renders_like_sftkit(name, msgs, request):
    if name == "smollm2":
        tpl = request.getfixturevalue("smollm2_template")
        want = "".join(s.text for s in tpl.jinja_segments(Conversation.from_messages(msgs), True))  # Jinja itself
        bos = ""
    else:
        tpl = load_template(name)
        want, bos = _ours(tpl, msgs), tpl.spec.bos
    add_bos = bool(bos)  # a tokenizer that adds BOS itself: the template must not repeat it
    mf = ollama.modelfile("m.gguf", tpl, tpl.stop_strings, add_bos=add_bos, name="m")
    parsed = ollama.parse_modelfile(mf.text)
    assert parsed["template"] == mf.template and parsed["parameters"]["stop"] == list(tpl.stop_strings)
    assert bos + ollama.ollama_prompt(parsed, msgs) == want
    if name == "smollm2":
        assert parsed["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_modelfile_notes_and_refusals(tiny_tok_dir, tmp_path):
    from transformers import AutoTokenizer

    notes = ollama.modelfile("m.gguf", load_template("llama3_instruct"), ["<|eot_id|>"], add_bos=True).notes
    assert any("trims" in n for n in notes)  # the one known difference for plain chats: Go cannot trim
    with pytest.raises(ollama.ModelfileError, match="first_user"):
        ollama.modelfile("m.gguf", load_template("gemma"), ["<end_of_turn>"], add_bos=True)
    with pytest.raises(ollama.ModelfileError, match="control characters"):
        ollama.modelfile("m.gguf", load_template("chatml"), ["<|im_end|>\x07"], add_bos=False)
    tok = AutoTokenizer.from_pretrained(tiny_tok_dir)
    tok.chat_template = ("{% for m in messages %}{% if m.content|length > 3 %}L:{% else %}S:{% endif %}"
                         "{{ m.content }}{% endfor %}")  # branches on content: not a fixed wrapper
    with pytest.raises(ollama.ModelfileError, match="could not compile it"):
        ollama.modelfile("m.gguf", HFChatTemplate(tok), ["x"], add_bos=False)
    path = tmp_path / "Modelfile"
    path.write_text("FROM llama3\n")  # somebody else's
    mf = ollama.modelfile("m.gguf", load_template("chatml"), ["<|im_end|>"], add_bos=False)
    with pytest.raises(RefusedPath):
        ollama.write(path, mf)
    path.unlink()
    ollama.write(path, mf)
    ollama.write(path, mf)  # its own: replaced
    assert path.read_text() == mf.text


# -- the Go template subset ---------------------------------------------------------------------------

_DATA = {"System": "sys", "Messages": [{"Role": "system", "Content": "s"}, {"Role": "user", "Content": "é{{x}}"},
                                       {"Role": "assistant", "Content": ""}], "Response": "", "Prompt": ""}
_HANDMADE = [
    "{{range .Messages}}{{if eq .Role \"user\" \"system\"}}[{{.Content}}]{{else if not .Content}}<empty>"
    "{{else}}?{{end}}{{end}}",
    "a  \n {{- .System -}} \n  b{{\"{{\"}}{{\"{\"}}{{`raw\\n`}}{{len .System}}{{len \"é\"}}",
    "{{and .System .Response}}|{{or .Response .System}}|{{and .Response .System}}|{{ne $.System \"x\"}}",
    "{{range .Messages}}{{$.System}}:{{.Role}};{{end}}{{if .Response}}R{{else}}N{{end}}",
    "{{\"tab\\tnl\\nq\\\"u\\u00e9\"}}",
]


def _emitted() -> list[str]:
    out = [ollama.go_template(load_template(n), add_bos=False)[0]
           for n in ("chatml", "qwen2_chatml", "llama3_instruct", "deepseek_chat", "chatglm3", "baichuan2_chat")]
    weird = load_template("chatml").spec.model_dump()
    weird["turns"]["user"]["open"] = "{{user}} {"  # literal braces in marker text must survive
    from sftkit.templates.json_template import JSONTemplate

    return [*out, ollama.go_template(JSONTemplate.from_dict(weird), add_bos=False)[0]]


def test_gotemplate_subset_is_strict():
    for bad in ("{{.X | printf \"%s\"}}", "{{with .X}}{{end}}", "{{$x := 1}}", "{{/* c */}}", "{{3}}",
                "{{range .M}}{{else}}{{end}}", "{{if .A}}", "{{.Nope}}", "{{index .M 0}}", "{{(.A)}}"):
        with pytest.raises(gotemplate.GoTemplateError):
            gotemplate.render(bad, {"A": 1, "M": [], "X": "x"})


GO_MAIN = textwrap.dedent("""\
    package main

    import (
        "encoding/json"
        "os"
        "strings"
        "text/template"
    )

    type job struct {
        Tpl  string         `json:"tpl"`
        Data map[string]any `json:"data"`
    }

    func main() {
        var jobs []job
        if err := json.NewDecoder(os.Stdin).Decode(&jobs); err != nil {
            panic(err)
        }
        out := []string{}
        for _, j := range jobs {
            t, err := template.New("").Option("missingkey=zero").Parse(j.Tpl)
            if err != nil {
                out = append(out, "PARSE ERROR: "+err.Error())
                continue
            }
            var b strings.Builder
            if err := t.Execute(&b, j.Data); err != nil {
                out = append(out, "EXEC ERROR: "+err.Error())
                continue
            }
            out = append(out, b.String())
        }
        json.NewEncoder(os.Stdout).Encode(out)
    }
    """)


def test_gotemplate_agrees_with_real_go(tmp_path):
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (`apt-get install golang-go`): the cross-check against text/template "
                    "needs it; the subset renderer's own tests still ran")
    (tmp_path / "main.go").write_text(GO_MAIN)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GO111MODULE": "off",
           "GOCACHE": os.environ.get("GOCACHE") or str(Path.home() / ".cache" / "go-build")}
    subprocess.run([go, "build", "-o", str(tmp_path / "render"), str(tmp_path / "main.go")], check=True, env=env,
                   capture_output=True, timeout=300)
    jobs = [{"tpl": t, "data": _DATA} for t in _HANDMADE]
    for tpl in _emitted():
        for msgs in (TWO_TURN, WITH_SYSTEM, [{"role": "user", "content": "{{ .System }} }}{{"}]):
            jobs.append({"tpl": tpl, "data": ollama.template_data("Default system.", msgs)})
    proc = subprocess.run([str(tmp_path / "render")], input=json.dumps(jobs), capture_output=True, text=True,
                          check=True, timeout=60)
    want = json.loads(proc.stdout)
    got = [gotemplate.render(j["tpl"], j["data"]) for j in jobs]
    for j, w, g in zip(jobs, want, got, strict=True):
        assert g == w, j["tpl"]


# -- the bundled model (SmolLM2-135M): f16 and q8_0 ----------------------------------------------------


@pytest.fixture(scope="module", params=["f16", "q8_0"])
def bundled(request, bundled_path, tmp_path_factory) -> tuple[str, gg.GGUFResult]:
    out = tmp_path_factory.mktemp(f"bundled-{request.param}")
    return request.param, gg.export_gguf(bundled_path, out, request.param, ollama_name="smollm2-sft", log=_quiet)


@pytest.mark.integration
def test_bundled_gguf_round_trip(bundled):
    qtype, res = bundled
    rec = _record(res)
    print(json.dumps({k: rec[k] for k in ("qtype", "bytes", "write_seconds", "verify_seconds", "exactness",
                                          "quality", "issue_21_figures", "tensor_types")}))
    # the file is the rounded model, exactly
    assert res.ok and rec["exactness"]["max_abs_diff"] <= gg.common.EXACT_LIMIT
    q = rec["quality"]
    assert q["ok"] and q["confident_positions"] > 100
    assert q["top1_agreement_confident"] >= 0.99 and q["max_abs_diff"] > 0  # rounding happened and was judged
    issue = rec["issue_21_figures"]
    assert issue["max_abs_diff_limit"] == gg.common.ISSUE_21[qtype] and isinstance(issue["max_abs_diff_met"], bool)
    assert rec["tokenizer"]["ok"] and rec["config"]["same"] and rec["metadata"]["ok"]
    assert rec["metadata"]["tokenizer_pre"] == "smollm"
    assert rec["metadata"]["file_type"] == int(gg.common.WRITTEN[qtype][0])
    mf = ollama.parse_modelfile(res.modelfile.read_text())
    assert mf["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert mf["parameters"]["stop"] == ["<|im_end|>"]


@pytest.mark.integration
def test_bundled_modelfile_renders_like_the_tokenizer(bundled, smollm2_template):
    _, res = bundled
    mf = ollama.parse_modelfile(res.modelfile.read_text())
    for msgs in (TWO_TURN, WITH_SYSTEM):
        want = "".join(s.text for s in smollm2_template.jinja_segments(Conversation.from_messages(msgs), True))
        assert ollama.ollama_prompt(mf, msgs) == want
