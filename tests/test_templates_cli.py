"""``sft template`` commands through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sftkit.cli.template import app

runner = CliRunner()
MSGS = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
QWEN = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"
)


@pytest.fixture
def messages_file(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"messages": MSGS}))
    return p


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"messages": MSGS}) for _ in range(2)) + "\n")
    return p


def test_list() -> None:
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0
    for name in ("qwen2_chatml", "llama3_instruct", "chatglm3", "baichuan2_chat", "deepseek_chat", "gemma"):
        assert name in r.stdout


def test_render_text_needs_no_model(messages_file) -> None:
    r = runner.invoke(app, ["render", "--template", "qwen2_chatml", "--messages", str(messages_file)])
    assert r.exit_code == 0, r.output
    assert r.stdout == QWEN + "\n"


def test_render_json_last_line(messages_file, tokenizer) -> None:
    r = runner.invoke(app, ["render", "--template", "qwen2_chatml", "--messages", str(messages_file), "--json"])
    assert r.exit_code == 0, r.output
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["text"] == QWEN
    assert last["input_ids"] == tokenizer(QWEN, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([x for x in last["labels"] if x != -100]) == "Hello.<|im_end|>"


def test_render_with_a_model_uses_its_own_template(tmp_path, tokenizer) -> None:
    p = tmp_path / "list.json"
    p.write_text(json.dumps(MSGS[:1]))
    r = runner.invoke(
        app, ["render", "--template", "smollm2-135m-instruct", "--messages", str(p), "--generation-prompt", "--json"]
    )
    assert r.exit_code == 0, r.output
    expected = tokenizer.apply_chat_template(MSGS[:1], tokenize=False, add_generation_prompt=True)
    assert json.loads(r.stdout.strip().splitlines()[-1])["text"] == expected


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--template", "qwen2_chatml", "--messages", "missing.json"], "missing.json: cannot read"),
        (["--template", "nope/nope", "--messages", "{m}"], "nope/nope"),
        (["--template", "gemma.jinja", "--messages", "{m}"], "gemma.jinja does not exist"),
    ],
)
def test_render_errors_are_one_line(messages_file, args, needle) -> None:
    r = runner.invoke(app, ["render", *[a.format(m=messages_file) for a in args]])
    assert r.exit_code == 2
    assert needle in r.stderr and "Traceback" not in r.output
    assert r.stderr.startswith("error: ")


def test_show_highlights_a_row(data_file) -> None:
    r = runner.invoke(app, ["show", "--model", "smollm2-135m-instruct", "--data", str(data_file), "--row", "1"])
    assert r.exit_code == 0, r.output
    assert "Hello.<|im_end|>" in r.stdout and "trained" in r.stdout


def test_show_row_out_of_range(data_file) -> None:
    r = runner.invoke(app, ["show", "--model", "smollm2-135m-instruct", "--data", str(data_file), "--row", "5"])
    assert r.exit_code == 2 and "row 5 is out of range" in r.stderr


def test_check_passes_for_the_bundled_model(data_file) -> None:
    r = runner.invoke(app, ["check", "--model", "smollm2-135m-instruct", "--data", str(data_file), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["ok"] is True and report["template"] == "tokenizer"


def test_check_fails_for_a_template_of_another_family() -> None:
    r = runner.invoke(app, ["check", "--model", "smollm2-135m-instruct", "--template", "llama3_instruct", "--json"])
    assert r.exit_code == 1
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert [f["check"] for f in report["findings"] if f["status"] == "fail"] == ["stop_tokens"]
    plain = runner.invoke(app, ["check", "--template", "llama3_instruct"])
    assert plain.exit_code == 1 and "stop_tokens" in plain.stdout


def test_render_json_labels_match_training(messages_file, tokenizer) -> None:
    from sftkit.core.conversation import Conversation
    from sftkit.templates import Renderer, load_template

    r = runner.invoke(app, ["render", "--template", "chatglm3", "--messages", str(messages_file), "--json"])
    assert r.exit_code == 0, r.output
    last = json.loads(r.stdout.strip().splitlines()[-1])
    rendered = Renderer(load_template("chatglm3"), tokenizer).render(Conversation.from_messages(MSGS))
    assert (last["input_ids"], last["labels"]) == (rendered.input_ids, rendered.labels)
    gen = runner.invoke(
        app, ["render", "--template", "chatglm3", "--messages", str(messages_file), "--json", "--generation-prompt"]
    )
    assert set(json.loads(gen.stdout.strip().splitlines()[-1])["labels"][-3:]) == {-100}


def test_show_prints_chinese_once(tmp_path) -> None:
    """Byte-level BPE splits one CJK character over several tokens with the same offsets."""
    msgs = [{"role": "user", "content": "舌苔发白怎么办？"}, {"role": "assistant", "content": "建议健脾祛湿。"}]
    p = tmp_path / "zh.jsonl"
    p.write_text(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["show", "--model", "smollm2-135m-instruct", "--data", str(p)])
    assert r.exit_code == 0, r.output
    assert "舌苔发白怎么办？" in r.stdout and "建议健脾祛湿。<|im_end|>" in r.stdout
