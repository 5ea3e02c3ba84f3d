"""Teacher answers -> student SFT data in one step (`sft generate --as-training-data`), and the preference
scores of `sft eval` checked against a hand computation."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.core.errors import RefusedPath
from sftkit.data import load_file
from sftkit.data.preference import PreferencePair, load_preference_file
from sftkit.evaluate import prefeval
from sftkit.infer.answers import meta_path, run_generate
from sftkit.infer.engine import Engine, GenParams, build_renderer

PROMPTS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]},
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "reference reply"}]},
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    """A tiny random model with untied embeddings: with tied ones, greedy decoding repeats the prompt's last
    token (the newline after the assistant header), and whitespace-only answers are not training data."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("teacher")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(teacher_dir) -> Engine:
    from sftkit.hub.models import load_model, load_tokenizer, resolve

    tok = load_tokenizer(teacher_dir)
    return Engine(load_model(resolve(str(teacher_dir))), tok, build_renderer(tok), batch_size=2)


def test_as_training_data_writes_the_messages_layout_sft_reads(engine, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PROMPTS))
    out = tmp_path / "answers.jsonl"
    s = run_generate(engine, data, out, GenParams(max_new_tokens=3), as_training_data=True)
    assert s.generated == 2 and s.cut_off == 2  # 3 tokens are never a finished answer from a random model
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["output"].strip() for r in rows)
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[0]["messages"][-1]["content"] == rows[0]["output"] and "prompt" not in rows[0]
    assert rows[1]["reference"] == "reference reply" and rows[1]["messages"][-1]["content"] == rows[1]["output"]
    assert json.loads(meta_path(out).read_text())["as_training_data"] is True
    loaded = load_file(out)  # the student's training file, as it stands
    assert loaded.format == "messages" and loaded.valid == 2 and loaded.rejected == 0
    again = run_generate(engine, data, out, GenParams(max_new_tokens=3), as_training_data=True)
    assert (again.generated, again.skipped) == (0, 2)
    before = out.read_bytes()
    with pytest.raises(RefusedPath, match="written with --as-training-data"):
        run_generate(engine, data, out, GenParams(max_new_tokens=3))
    assert out.read_bytes() == before


def test_generate_cli_flag(teacher_dir, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps(PROMPTS[0]) + "\n")
    out = tmp_path / "a.jsonl"
    res = CliRunner().invoke(app, ["generate", str(teacher_dir), "--data", str(data), "--out", str(out),
                                   "--max-new-tokens", "2", "--as-training-data"])
    assert res.exit_code == 0, res.output
    assert "stopped at --max-new-tokens 2" in res.output.replace("\n", " ")
    assert load_file(out).format == "messages"


def test_pair_logps_equal_a_hand_computation(engine, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "Say hi", "chosen": "hi there", "rejected": "no"}) + "\n")
    pair = load_preference_file(f).rows[0]
    assert isinstance(pair, PreferencePair)
    (c, r), = prefeval.pair_logps(engine, [pair])
    rendered = engine.renderer
    prompt = rendered.tokenizer(rendered.prompt_text(pair.prompt), add_special_tokens=False)["input_ids"]

    def by_hand(reply_ids):
        ids = torch.tensor([prompt + reply_ids])
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(input_ids=ids).logits.float(), -1)[0]
        return sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(reply_ids))

    from sftkit.templates.pairs import render_pairs

    rp = render_pairs([pair], rendered)[0]
    assert rp.prompt_ids == prompt
    assert c == pytest.approx(by_hand(rp.chosen_ids), abs=1e-3)
    assert r == pytest.approx(by_hand(rp.rejected_ids), abs=1e-3)


def test_preference_block_scores():
    model = [(-1.0, -3.0), (-5.0, -2.0), None, (-2.0, -2.5)]
    base = [(-2.0, -2.0), (-4.0, -4.0), (-1.0, -1.0), (-2.0, -1.0)]
    block = prefeval.preference_block({"model": model, "baseline": base}, beta=0.5)
    assert block["n"] == 3
    assert block["model"]["pref_accuracy"] == pytest.approx(2 / 3)
    assert block["baseline"]["pref_accuracy"] == 0.0
    assert block["model"]["logp_margin"] == pytest.approx((2 - 3 + 0.5) / 3)
    # implicit rewards: 0.5*((-1+2)-(-3+2)) = 1.0, 0.5*((-5+4)-(-2+4)) = -1.5, 0.5*((0)-(-1.5)) = 0.75
    assert block["reward_accuracy"] == pytest.approx(2 / 3)
    assert block["reward_margin"] == pytest.approx((1.0 - 1.5 + 0.75) / 3)
    assert prefeval.run_beta({"stage": "simpo"}) == 2.0 and prefeval.run_beta({"pref": {"beta": 0.3}}) == 0.3
