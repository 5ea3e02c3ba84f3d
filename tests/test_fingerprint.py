"""A resume refusal names what changed: the data file, or the config key with both values."""

from __future__ import annotations

from sftkit.core.config import RunConfig
from sftkit.hub.models import load_tokenizer
from sftkit.templates.registry import load_template
from sftkit.templates.render import Renderer
from sftkit.train.fingerprint import differences, fingerprint


def _fp(tmp_path, tiny_model_dir, **train):
    data = tmp_path / "t.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    cfg = RunConfig.model_validate({"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)]},
                                    "train": train})
    tok = load_tokenizer(tiny_model_dir)
    return fingerprint(cfg, Renderer(load_template(None, tok), tok), tiny_model_dir)


def test_changed_config_key_is_named(tmp_path, tiny_model_dir):
    a = _fp(tmp_path, tiny_model_dir, learning_rate=2e-4)
    assert differences(a, _fp(tmp_path, tiny_model_dir, learning_rate=2e-4)) == []
    assert differences(a, _fp(tmp_path, tiny_model_dir, learning_rate=1e-3)) == [
        "config train.learning_rate changed (0.0002 -> 0.001)"]
    # keys that may change on resume are not part of the fingerprint
    assert differences(a, _fp(tmp_path, tiny_model_dir, learning_rate=2e-4, max_steps=50)) == []
    old = {k: v for k, v in a.items() if k != "config_values"}  # a fingerprint written before names existed
    assert differences(old, _fp(tmp_path, tiny_model_dir, learning_rate=1e-3)) == ["the config changed"]
