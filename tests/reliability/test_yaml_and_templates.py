"""Hostile or broken inputs to config loading and chat templates end in one clear error, fast.

YAML: an alias bomb (a few hundred bytes expanding to 10^8 values) is refused before anything
walks it; a file that is not UTF-8 text, or binary, is named with the offset of its first bad
byte; legitimate anchors still load. Templates: a chat template the Jinja sandbox blocks, or one
that loops or grows without end, is a ``TemplateError`` naming the template (exit 2 for
``sft template render``, ``sft chat --prompt`` and ``sft train``; HTTP 400 from the console),
never a traceback, and a loop is stopped by the render budget. Real CLI subprocesses, a real
console server, real files.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftkit.core.configio import load_config, parse_overrides
from sftkit.core.conversation import Conversation
from sftkit.core.errors import ConfigError, TemplateError
from sftkit.templates.registry import load_template
from sftkit.templates.render import Renderer

SFT = str(Path(sys.executable).with_name("sft"))
DATA = "data:\n  train: t.jsonl\n"
CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def _sft(*args: str, cwd: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run([SFT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                       env={**os.environ, "COLUMNS": "400"})
    return r, time.monotonic() - t0


def _bomb(levels: int = 8) -> str:
    """The "billion laughs" shape: level k is a list of ten aliases to level k-1 (10^levels values)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n" + DATA


# -- YAML aliases ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)  # the old code walked all 10^8 values (30 s and more)
def test_alias_bomb_is_refused_before_any_walk(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb(), encoding="utf-8")
    assert len(p.read_bytes()) < 600
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert msg.startswith(f"{p}:2: YAML aliases (*a0 here"), msg  # the first alias, file:line
    assert "Write the repeated values out" in msg


@pytest.mark.timeout(60)
def test_alias_bomb_in_an_override_is_refused():
    levels = [f"l0: &l0 [{', '.join(['1'] * 10)}]"]
    levels += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 10)}]" for k in range(1, 7)]
    item = "train.report_to={" + ", ".join(levels) + "}"
    with pytest.raises(ConfigError, match=r"override 'train\.report_to=.*YAML aliases \(\*l0 here"):
        parse_overrides([item])


def test_recursive_alias_and_deep_nesting_are_refused(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text(DATA + "a: &a [1, *a]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rec\.yaml:3: the YAML alias \*a is used inside the value it names"):
        load_config(p)
    p.write_text(DATA + "x: " + "[" * 500 + "]" * 500 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rec\.yaml:3: not valid YAML: nested more than 100 levels deep"):
        load_config(p)


def test_values_the_yaml_constructor_refuses_are_named(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("name: 2024-13-45\n" + DATA, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:1: cannot read '2024-13-45': month must be in 1\.\.12"):
        load_config(p)
    p.write_text(DATA + "train:\n  seed: " + "7" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:4: cannot read .*digits"):
        load_config(p)


def test_ordinary_anchors_and_aliases_still_load(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    p = tmp_path / "cfg.yaml"
    p.write_text("name: &name anchors\n"
                 "data:\n"
                 "  train:\n"
                 "    - {path: a.jsonl, columns: &cols {prompt: q, response: a}}\n"
                 "    - {path: a.jsonl, columns: *cols, weight: 0.5}\n"
                 "  test: [{path: a.jsonl, columns: *cols}]\n"
                 "method: &lora {r: 16, alpha: 32}\n"
                 "train: {logging_steps: 3, report_to: []}\n", encoding="utf-8")
    cfg = load_config(p)
    assert cfg.name == "anchors"
    assert [s.columns for s in (*cfg.data.train, *cfg.data.test)] == [{"prompt": "q", "response": "a"}] * 3
    assert (cfg.method.r, cfg.method.alpha) == (16, 32)


def test_sft_train_refuses_the_alias_bomb(tmp_path):
    (tmp_path / "bomb.yaml").write_text(_bomb(), encoding="utf-8")
    r, _ = _sft("train", "bomb.yaml", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "bomb.yaml:2: YAML aliases" in r.stderr and "Traceback" not in r.stderr


def _console(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("_console_helpers", Path(__file__).parents[1] / "console"
                                                  / "console_helpers.py")
    helpers = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]
    return helpers.LiveConsole(tmp_path / "runs", tmp_path)


@pytest.mark.timeout(120)
def test_console_config_check_refuses_the_alias_bomb(tmp_path):
    """The console's config endpoints read YAML through the same loader (reported: 32 s there)."""
    with _console(tmp_path) as live:
        t0 = time.monotonic()
        r = live.client.post("/api/config/check", json={"yaml": _bomb(), "estimate": False})
        assert time.monotonic() - t0 < 5
        assert r.status_code == 400, r.text
        assert "YAML:2: YAML aliases (*a0 here" in r.json()["error"]["message"]
        r = live.client.post("/api/config/to_form", json={"yaml": _bomb()})
        assert "YAML aliases" in r.json()["errors"][0]["message"]


# -- files that are not UTF-8 text -------------------------------------------------------------------

NOT_TEXT = {
    "latin1": ("name: caf\xe9\n".encode("latin-1") + DATA.encode(), "not UTF-8 text: byte 0xe9 at byte offset 9"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text: byte 0x89 at byte offset 0"),
    "nul": (b"name: run\x00\x01\n" + DATA.encode(), "a binary file, not text: a NUL byte at byte offset 9"),
}


@pytest.mark.parametrize("kind", sorted(NOT_TEXT))
def test_sft_train_names_the_first_bad_byte(tmp_path, kind):
    data, expected = NOT_TEXT[kind]
    (tmp_path / "cfg.yaml").write_bytes(data)
    r, _ = _sft("train", "cfg.yaml", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "cfg.yaml: the config is " + expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_template_and_messages_files_that_are_not_text(tmp_path, tokenizer):
    (tmp_path / "t.jinja").write_bytes(b"{{ messages[0]['content'] }}\xff")
    with pytest.raises(TemplateError, match=r"t\.jinja: the chat template is not UTF-8 text: byte 0xff at byte "
                                            r"offset 28"):
        load_template(str(tmp_path / "t.jinja"), tokenizer)
    (tmp_path / "t.json").write_bytes(b'{"name": "x\x00"}')
    with pytest.raises(TemplateError, match=r"t\.json: the template file is a binary file.*byte offset 11"):
        load_template(str(tmp_path / "t.json"), tokenizer)


# -- chat templates the sandbox refuses --------------------------------------------------------------

BLOCKED = {
    "mro": "{{ ''.__class__.__mro__ }}{% for m in messages %}{{ m.content }}{% endfor %}",
    "globals": "{% for m in messages %}{{ m.content }}{% endfor %}{{ cycler.__init__.__globals__ }}",
}
LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}"


def _render_all(template, tokenizer) -> None:
    Renderer(template, tokenizer).render(Conversation.from_messages(CHAT))


@pytest.mark.parametrize("kind", sorted(BLOCKED))
def test_sft_template_render_blocked_template_exit_2(tmp_path, kind):
    (tmp_path / "evil.jinja").write_text(BLOCKED[kind], encoding="utf-8")
    (tmp_path / "m.json").write_text('[{"role": "user", "content": "Hi"}]', encoding="utf-8")
    r, _ = _sft("template", "render", "--template", "evil.jinja", "--messages", "m.json", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "evil.jinja:1: chat template blocked by sftkit's template sandbox: access to attribute" in r.stderr
    assert "is unsafe" in r.stderr and "Traceback" not in r.stderr


def test_sft_template_render_looping_template_is_stopped(tmp_path):
    (tmp_path / "loop.jinja").write_text(LOOPS, encoding="utf-8")
    (tmp_path / "m.json").write_text('[{"role": "user", "content": "Hi"}]', encoding="utf-8")
    r, seconds = _sft("template", "render", "--template", "loop.jinja", "--messages", "m.json", cwd=tmp_path,
                      timeout=180)  # the old code: 10^10 iterations, hours
    assert r.returncode == 2, r.stderr
    assert "loop.jinja:1: chat template blocked" in r.stderr and "ran over its 2 s budget" in r.stderr
    assert "Traceback" not in r.stderr
    assert seconds < 120  # start-up (seconds on a loaded machine) and one 2 s render budget


# Each would run for hours or take gigabytes unbounded (sized here so the old code survives them).
RUNAWAY = {
    "nested loops over a variable": "{% set r = range(100000) | list %}{% for a in r %}{% for b in r %}"
                                    "{% endfor %}{% endfor %}",
    "huge repetition": "{{ 'x' * 10**8 }}",
    "huge width filter": "{{ 'x' | center(10**8) }}",
    "huge width method": "{{ 'x'.ljust(10**8) }}",
    "huge printf width": "{{ '%100000000d' % 1 }}",
    "doubling namespace": "{% set ns = namespace(s='xx') %}{% for i in range(26) %}{% set ns.s = ns.s ~ ns.s %}"
                          "{% endfor %}{{ ns.s | length }}",
    "doubling macro": "{% macro d(n) %}{% if n %}{% set x = d(n - 1) %}{{ x }}{{ x }}{% else %}x{% endif %}"
                      "{% endmacro %}{{ d(26) | length }}",
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "range over the cap": "{% for i in range(10**9) %}{% endfor %}",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(RUNAWAY))
def test_runaway_templates_are_stopped_by_the_budget(tmp_path, tokenizer, kind):
    path = tmp_path / "runaway.jinja"
    path.write_text(RUNAWAY[kind] + "{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    t0 = time.monotonic()
    with pytest.raises(TemplateError, match=r"runaway\.jinja(:1)?: chat template blocked by sftkit's template"):
        _render_all(load_template(str(path), tokenizer), tokenizer)
    assert time.monotonic() - t0 < 30  # the budget is 2 s a render; a loaded machine is slower


def test_a_template_blocked_only_with_tools_fails_at_load(tmp_path, tokenizer):
    """The load-time probes render with tools, reasoning and system turns: a refusal in any of them
    is not taken for "this field is unsupported"; the template fails when it is loaded."""
    path = tmp_path / "tools.jinja"
    path.write_text("{% if tools %}{{ ''.__class__.__mro__ }}{% endif %}"
                    "{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"tools\.jinja:1: chat template blocked.*'__class__'"):
        load_template(str(path), tokenizer)


def test_template_errors_of_its_own_are_template_errors(tmp_path, tokenizer):
    path = tmp_path / "strict.jinja"
    path.write_text("{% for m in messages %}{% if m.role == 'assistant' and m.content == 'Hello' %}"
                    "{{ raise_exception('no greetings here') }}{% endif %}{{ m.content }}{% endfor %}",
                    encoding="utf-8")
    with pytest.raises(TemplateError, match=r"strict\.jinja:1: the chat template cannot render this conversation: "
                                            r"no greetings here"):
        _render_all(load_template(str(path), tokenizer), tokenizer)
    path.write_text("{% for m in messages %}{{ m.content }\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"strict\.jinja:1: not a valid Jinja chat template"):
        load_template(str(path), tokenizer)


# What transformers gives a chat template, used the way real templates use it: the sandbox renders
# the same text as tokenizer.apply_chat_template.
RICH = (
    "{%- set ns = namespace(last_user=-1, n=0, stamp=1700000000) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ bos_token }}{%- if tools %}<tools>{{ tools | tojson(indent=2) }}</tools>\n{%- endif %}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif -%}"
    "{%- if m.role == 'tool' %}{% continue %}{% endif -%}"
    "<|{{ m.role }}|>{{ '%02d' % loop.index }} "
    "{%- if m.reasoning_content is defined and m.thinking == m.reasoning_content %}<think>{{ m.thinking }}"
    "</think>{% endif -%}"
    "{%- if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}{% endgeneration %}"
    "{%- else %}{{ m.content }}{% endif -%}"
    "{%- for c in m.tool_calls or [] %}[{{ c.function.name }}({{ c.function.arguments | tojson }})]{% endfor -%}"
    "{%- set ns.n = ns.n + 1 -%}{%- if loop.index0 > ns.last_user + 1 %}{% break %}{% endif -%}"
    "{{ eos_token }}\n{%- endfor -%}"
    "{{ dict(turns=ns.n, keys=(dict.fromkeys(['a', 'b']) | list)) | tojson }}{{ '-' * 3 }}"
    "{{ '%d|%s' % (ns.stamp, ns.stamp | string | truncate(255)) }}{{ '{:>8}'.format(ns.n) }}"  # numbers as data
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)
RICH_CASES = [
    ([{"role": "system", "content": "S"}, *CHAT, {"role": "user", "content": "and?"}], None),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " a ", "reasoning_content": "why",
      "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
      {"role": "tool", "content": "out"}, {"role": "assistant", "content": "done"}],
     [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}]),
]


@pytest.mark.parametrize("case", range(len(RICH_CASES)))
@pytest.mark.parametrize("gen", [False, True])
def test_the_sandbox_renders_what_transformers_renders(tokenizer, case, gen):
    from sftkit.templates.sandbox import render_chat

    messages, tools = RICH_CASES[case]
    tok = copy.copy(tokenizer)
    tok.chat_template = RICH
    want = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)
    assert "<think>why</think>" in want or case == 0
    assert render_chat(RICH, "rich.jinja", messages, tools, gen, tok.special_tokens_map) == want


# -- the commands --------------------------------------------------------------------------------------


def _model_with_template(tmp_path: Path, tiny_model_dir: Path, template: str) -> Path:
    d = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, d)
    (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    return d


def test_sft_chat_prompt_blocked_template_exit_2(tmp_path, tiny_model_dir):
    model = _model_with_template(tmp_path, tiny_model_dir, BLOCKED["mro"])
    r, _ = _sft("chat", str(model), "--prompt", "Hi", "--max-new-tokens", "2", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"the chat template of {model} (line 1): chat template blocked" in r.stderr, r.stderr
    assert "'__class__'" in r.stderr and "Traceback" not in r.stderr


def test_sft_train_blocked_template_exit_2(tmp_path, tiny_model_dir):
    (tmp_path / "evil.jinja").write_text(BLOCKED["globals"], encoding="utf-8")
    (tmp_path / "t.jsonl").write_text('{"messages": [{"role": "user", "content": "Hi"}, '
                                      '{"role": "assistant", "content": "Hello"}]}\n' * 4, encoding="utf-8")
    (tmp_path / "cfg.yaml").write_text(f"model:\n  name_or_path: {tiny_model_dir}\ntemplate: evil.jinja\n"
                                       "output_dir: run\ntrain:\n  max_steps: 1\n" + DATA, encoding="utf-8")
    r, _ = _sft("train", "cfg.yaml", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "evil.jinja:1: chat template blocked" in r.stderr and "'__init__'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.timeout(300)
def test_console_chat_with_a_blocked_template_is_a_400(tmp_path, tiny_model_dir):
    """Refused when the model loads, and (a template that only misbehaves on some prompts) when
    the prompt is rendered: a JSON error either way, never a 500."""
    evil = _model_with_template(tmp_path, tiny_model_dir, BLOCKED["mro"])
    sneaky = tmp_path / "sneaky-model"
    shutil.copytree(tiny_model_dir, sneaky)
    (sneaky / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if 'open sesame' in m.content %}{{ cycler.__init__.__globals__ }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", encoding="utf-8")
    with _console(tmp_path) as live:
        r = live.client.post("/api/chat", json={"model": str(evil), "prompt": "Hi", "baseline": "none"})
        assert r.status_code == 400, r.text
        assert "chat template blocked by sftkit's template sandbox" in r.json()["error"]["message"]
        body = {"model": str(sneaky), "prompt": "open sesame", "baseline": "none", "max_new_tokens": 2}
        r = live.client.post("/api/chat", json=body)
        assert r.status_code == 400, r.text
        assert "'__init__'" in r.json()["error"]["message"]
        r = live.client.post("/api/chat", json={**body, "prompt": "Hi"})  # control: the model itself works
        assert r.status_code == 200, r.text
