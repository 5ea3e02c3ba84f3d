"""evaluate(): loss/perplexity, generation metrics, baseline deltas, flips,
latency, forgetting, and the files written into a run folder."""

from __future__ import annotations

import json
import math

import pytest

from sftkit.evaluate.runner import evaluate, fit_latency, general_check_path, load_conversations
from sftkit.infer.engine import GenResult

ROWS = [
    ("Is 'I love it' positive or negative?", "positive"),
    ("Is 'I hate it' positive or negative?", "negative"),
    ("Is 'great film' positive or negative?", "positive"),
    ("Is 'awful food' positive or negative?", "negative"),
    ("这句话是正面还是负面:'太好了'", "positive"),
    ("这句话是正面还是负面:'太差了'", "negative"),
]
KEYS = {"model", "baseline", "delta", "n", "flips", "latency", "forgetting"}


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("evaldata") / "test.jsonl"
    with p.open("w") as f:
        for q, a in ROWS:
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return p


@pytest.fixture(scope="module")
def other_tiny_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model's architecture with different random weights: a baseline that differs."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(AutoConfig.from_pretrained(tiny_model_dir))
    out = tmp_path_factory.mktemp("tiny-llama-b")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, eval_file):
    """A run folder: config.yaml naming the tiny base + a random (non-zero) LoRA adapter."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(run / "adapter")
    config = {"model": {"name_or_path": str(tiny_model_dir)}, "template": None, "data": {"test": [str(eval_file)]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_evaluate_with_baseline_model(tiny_model_dir, other_tiny_dir, eval_file):
    res = evaluate(str(tiny_model_dir), eval_file, baseline_ref=str(other_tiny_dir), max_new_tokens=4)
    assert res.keys() >= KEYS
    assert res["n"] == len(ROWS)
    assert res["metrics"] == ["classification"]
    for side in ("model", "baseline"):
        m = res[side]
        assert {"loss", "ppl", "accuracy", "macro_f1"} <= m.keys()
        assert math.isclose(m["ppl"], math.exp(m["loss"]), rel_tol=1e-9)
        assert m["loss"] > 0
    assert res["model"]["loss"] != res["baseline"]["loss"]  # different weights
    assert math.isclose(res["delta"]["loss"], res["model"]["loss"] - res["baseline"]["loss"])
    assert res["forgetting"]["n"] == 30 and 0 <= res["forgetting"]["model"] <= 1
    assert "delta" in res["forgetting"]
    assert res["latency"]["n"] > 0 and res["latency"]["b_s"] is not None
    assert isinstance(res["flips"], list)
    json.dumps(res)  # strict JSON-able


def test_evaluate_run_defaults(tiny_run):
    """In a run folder: data from config data.test, baseline = base (adapter off), files written."""
    res = evaluate(str(tiny_run), max_new_tokens=3, forgetting=False, latency_samples=0, metrics=["em", "rouge"])
    assert res["n"] == len(ROWS)
    assert res["baseline"], "the base model is the default baseline of a run"
    assert res["model"]["loss"] != res["baseline"]["loss"]  # the adapter changes the model
    assert {"exact_match", "rouge1", "rouge2", "rougeL"} <= res["model"].keys()
    saved = json.loads((tiny_run / "eval.json").read_text())
    assert saved["n"] == len(ROWS)
    preds = (tiny_run / "eval_predictions.jsonl").read_text().splitlines()
    assert len(preds) == len(ROWS)
    row = json.loads(preds[0])
    assert {"prompt", "reference", "model", "baseline", "model_score"} <= row.keys()


def test_base_loss_equals_plain_model(tiny_run, tiny_model_dir, eval_file):
    """Disabling the adapter gives exactly the base model's loss."""
    plain = evaluate(
        str(tiny_model_dir), eval_file, baseline_ref="none", max_new_tokens=1, forgetting=False, latency_samples=0
    )
    assert plain["baseline"] == {} and plain["delta"] == {}
    run = evaluate(str(tiny_run), eval_file, max_new_tokens=1, forgetting=False, latency_samples=0, write=False)
    assert math.isclose(run["baseline"]["loss"], plain["model"]["loss"], rel_tol=1e-5)


def test_fit_latency_recovers_line():
    rs = [GenResult("", [0] * x, "length", 5, x, 0.2 + 0.01, 0.2 + 0.01 * x) for x in (5, 10, 20, 40)]
    fit = fit_latency(rs)
    assert math.isclose(fit["k_s_per_token"], 0.01, rel_tol=1e-9)
    assert math.isclose(fit["b_s"], 0.2, rel_tol=1e-9)
    same = fit_latency([GenResult("", [0] * 10, "length", 5, 10, 0.3, 1.2)] * 2)
    assert math.isclose(same["b_s"], 0.3) and math.isclose(same["k_s_per_token"], 0.1)


def test_general_check_asset():
    convs = load_conversations(general_check_path())
    assert len(convs) >= 30
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in c.final_reply()) for c in convs)
    assert all(len(c.final_reply()) <= 10 for c in convs)


def test_cli_eval_json_last_line(tiny_model_dir, other_tiny_dir, eval_file, tmp_path):
    from typer.testing import CliRunner

    from sftkit.cli import app

    args = ["eval", str(tiny_model_dir), "--data", str(eval_file), "--baseline", str(other_tiny_dir)]
    args += ["--limit", "2", "--max-new-tokens", "2", "--no-forgetting", "--metrics", "accuracy,em", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(last) == {"model", "baseline", "delta", "n"}
    assert last["n"] == 2 and "accuracy" in last["model"] and "exact_match" in last["delta"]
    bad = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--data", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 2
    (tmp_path / "config.yaml").write_text("model: {name_or_path: x}\n")
    rep = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert rep.exit_code == 0 and (tmp_path / "report.html").is_file()


def test_baseline_first_scores_equal_the_adapter_off_baseline(tiny_run, tiny_model_dir, eval_file):
    """The pipeline measures the base model before training and reuses it in the comparison: that is
    only honest if the plain base model and the run's adapter-off base score identically."""
    from sftkit.evaluate.runner import load_sides, metric_names, run_side, side_scores

    convs = load_conversations(eval_file)
    names = metric_names(None, convs)
    first = run_side(load_sides(str(tiny_model_dir), "none")[0], convs, names, 4)
    fresh = evaluate(str(tiny_run), eval_file, None, max_new_tokens=4, forgetting=False, latency_samples=0,
                     write=False)
    reused = evaluate(str(tiny_run), eval_file, None, max_new_tokens=4, forgetting=False, latency_samples=0,
                      write=False, done={"baseline": first})
    first_scores = side_scores(first)
    for k in ("loss", "accuracy", "macro_f1"):
        assert math.isclose(fresh["baseline"][k], first_scores[k], rel_tol=1e-6, abs_tol=1e-9)
    assert fresh["flips"] == reused["flips"]
    assert fresh["model"]["loss"] == reused["model"]["loss"]


def test_cli_eval_on_a_run_writes_report_and_names_skipped_rows(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from sftkit.cli import app

    data = tmp_path / "t.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in ROWS[:2]]
    rows.append({"messages": [{"role": "user", "content": "no answer here"}]})  # nothing to compare with
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "not json\n")
    res = CliRunner().invoke(app, ["eval", str(tiny_run), "--data", str(data), "--max-new-tokens", "2",
                                   "--no-forgetting", "--json"])
    assert res.exit_code == 0, res.output
    assert "2 test row(s) not scored" in res.output and f"{data}:4" in res.output
    saved = json.loads((tiny_run / "eval.json").read_text())
    assert saved["n"] == 2 and len(saved["skipped"]) == 2
    assert (tiny_run / "report.html").is_file()


def test_per_task_metrics(tiny_model_dir, tmp_path):
    """Rows with a "task" field are also scored per task, each with the metrics that fit it."""
    rows = [("情感：太好了", "positive", "classification"), ("情感：太差了", "negative", "classification"),
            ("把'你好'翻译成英文", "Hello", "translation"),
            ("把'谢谢'翻译成英文", "Thank you very much", "translation")]
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     "task": t}, ensure_ascii=False) + "\n" for q, a, t in rows), encoding="utf-8")
    res = evaluate(str(tiny_model_dir), p, "none", max_new_tokens=3, forgetting=False, latency_samples=0)
    tasks = res["per_task"]
    assert set(tasks) == {"classification", "translation"} and tasks["translation"]["n"] == 2
    assert "accuracy" in tasks["classification"]["model"]
    assert "rougeL" in tasks["translation"]["model"] and "accuracy" not in tasks["translation"]["model"]
