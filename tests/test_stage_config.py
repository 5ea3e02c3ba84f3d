"""stage / pref / teacher in the config: defaults from the papers, contradictions refused with the key."""

from __future__ import annotations

import pytest

from sftkit.core.configio import load_config
from sftkit.core.errors import ConfigError
from sftkit.core.stagecfg import Stage


def cfg_file(tmp_path, body: str):
    p = tmp_path / "cfg.yaml"
    p.write_text("data:\n  train: t.jsonl\n" + body)
    return p


def test_stage_defaults_to_sft_and_pref_defaults_follow_the_papers(tmp_path):
    cfg = load_config(cfg_file(tmp_path, ""))
    assert cfg.stage is Stage.sft and cfg.teacher.name_or_path is None
    p = cfg.pref
    assert [p.beta_for(s) for s in (Stage.dpo, Stage.kto, Stage.orpo, Stage.simpo)] == [0.1, 0.1, 0.1, 2.0]
    assert p.loss_for(Stage.dpo) == "sigmoid" and p.loss_for(Stage.kto) == "kto"
    assert p.simpo_gamma / p.beta_for(Stage.simpo) == 0.5  # SimPO's gamma/beta ratio


def test_teacher_path_is_relative_to_the_config(tmp_path):
    (tmp_path / "teacher").mkdir()
    cfg = load_config(cfg_file(tmp_path, "stage: distill\nteacher:\n  name_or_path: teacher\n"))
    assert cfg.teacher.name_or_path == str(tmp_path / "teacher")


@pytest.mark.parametrize(("body", "key", "hint"), [
    ("pref:\n  beta: 0.2\n", "pref.beta", "set stage, or remove pref:"),
    ("stage: dpo\npref:\n  loss_type: simpo\n", "pref.loss_type", "use one of sigmoid"),
    ("stage: orpo\npref:\n  loss_type: sigmoid\n", "pref.loss_type", "this stage has one loss"),
    ("stage: dpo\npref:\n  label_smoothing: 0.1\n", "pref.label_smoothing", "robust"),
    ("stage: kto\npref:\n  reference_free: true\n", "pref.reference_free", "applies to stage dpo"),
    ("stage: dpo\npref:\n  desirable_weight: 1.2\n", "pref.desirable_weight", "applies to stage kto"),
    ("stage: kto\ntrain:\n  per_device_train_batch_size: 1\n", "train.per_device_train_batch_size",
     "apo_zero_unpaired"),
    ("stage: distill\n", "teacher.name_or_path", "set teacher.name_or_path"),
    ("teacher:\n  name_or_path: x\n", "teacher", "set stage: distill"),
    ("stage: dpo\ntrain:\n  packing: true\n", "train.packing", "remove train.packing"),
    ("stage: pt\ntemplate: qwen2_chatml\n", "template", "plain text"),
    ("method:\n  type: qlora\n  merge_base: true\n", "method.merge_base", "sft export"),
    ("stage: dpo\ntrain:\n  backend: unsloth\n", "train.backend", "transformers"),
])
def test_contradictions_are_refused_with_the_key(tmp_path, body, key, hint):
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file(tmp_path, body))
    assert f"{key}: contradictory options" in str(e.value) and hint in str(e.value)


def test_stage_specific_keys_are_accepted_where_they_apply(tmp_path):
    ok = ["stage: dpo\npref:\n  loss_type: robust\n  label_smoothing: 0.1\n  sft_weight: 0.5\n",
          "stage: dpo\npref:\n  reference_free: true\n",
          "stage: kto\npref:\n  desirable_weight: 1.2\n  loss_type: apo_zero_unpaired\n"
          "train:\n  per_device_train_batch_size: 1\n",
          "stage: simpo\npref:\n  simpo_gamma: 0.8\n  sft_weight: 0.1\n",
          "stage: distill\nteacher:\n  name_or_path: m\n  beta: 0.5\n",
          "stage: pt\n", "method:\n  merge_base: true\n"]
    for body in ok:
        load_config(cfg_file(tmp_path, body))


def test_preference_layouts_and_keys_are_valid_data_options(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stage: dpo\ndata:\n  train:\n    - path: p.jsonl\n      format: sharegpt_pairs\n"
                 "      columns: {chosen: good, rejected: bad}\n")
    assert load_config(p).data.train[0].format == "sharegpt_pairs"
    p.write_text("data:\n  train:\n    - path: p.jsonl\n      format: pairs_of_things\n")
    with pytest.raises(ConfigError, match="sharegpt_pairs"):
        load_config(p)


def test_estimate_counts_both_replies_of_a_pair(tmp_path, tiny_model_dir):
    from sftkit.estimate import setup_from_config

    base = f"model:\n  name_or_path: {tiny_model_dir}\ntrain:\n  per_device_train_batch_size: 4\n"
    sft = setup_from_config(load_config(cfg_file(tmp_path, base)))
    dpo = setup_from_config(load_config(cfg_file(tmp_path, base + "stage: dpo\n")))
    assert (sft.micro_batch, dpo.micro_batch) == (4, 8)
