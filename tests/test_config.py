"""Config loading: typed, strict, helpful errors with file:line and a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftkit.core.config import RunConfig
from sftkit.core.configio import load_config, parse_overrides
from sftkit.core.errors import ConfigError
from sftkit.core.fielddocs import field_docs


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_minimal_config_gets_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  train: data/train.jsonl\n"))
    assert cfg.data.train[0].path == tmp_path / "data/train.jsonl"
    assert cfg.method.type.value == "lora" and cfg.method.r == 8 and cfg.method.alpha == 16
    assert cfg.method.dropout == 0.05 and cfg.method.target_modules == "all-linear"
    assert cfg.model.name_or_path == "smollm2-135m-instruct"


def test_typo_names_key_line_and_closest_valid_key(tmp_path):
    p = write(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  learnig_rate: 0.001\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:4" in msg
    assert "train.learnig_rate" in msg
    assert "did you mean 'train.learning_rate'?" in msg


def test_unknown_top_level_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'.*valid keys here: name, output_dir"):
        load_config(write(tmp_path, "data:\n  train: t.jsonl\nzzz: 1\n"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train:\n  learning_rate: -1\n", "train.learning_rate"),
        ("train:\n  per_device_train_batch_size: many\n", "train.per_device_train_batch_size"),
        ("train:\n  bf16: true\n  fp16: true\n", "bf16 and fp16 are both true"),
        ("method:\n  type: lorax\n", "method.type"),
        ("data:\n  val_size: 1.5\n  train: t.jsonl\n", "data.val_size"),
    ],
)
def test_invalid_values_are_rejected_with_key_path(tmp_path, text, needle):
    if "data:" not in text:
        text += "data:\n  train: t.jsonl\n"
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_missing_data_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="data: Field required"):
        load_config(write(tmp_path, "name: x\n"))


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  train: t.jsonl\n"),
                      ["train.max_steps=2", "output_dir=/tmp/run", "method.target_modules=[q_proj, v_proj]"])
    assert cfg.train.max_steps == 2
    assert cfg.output_dir == Path("/tmp/run")
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    cfg = load_config(write(tmp_path, "data:\n  train: t.jsonl\n  test: x.jsonl\n"), ["data.cutoff_len=64"])
    assert cfg.data.cutoff_len == 64 and cfg.data.test[0].path == tmp_path / "x.jsonl"
    with pytest.raises(ConfigError, match="expected dotted key=value"):
        parse_overrides(["train.max_steps"])


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  train: t.jsonl\n"))
    with pytest.raises(Exception, match="frozen"):
        cfg.train.learning_rate = 1.0  # type: ignore[misc]


def test_every_field_is_documented():
    docs = field_docs()
    assert len(docs) > 40
    missing = [d.key for d in docs if not d.doc]
    assert missing == [], f"fields without a description: {missing}"
    assert {"train.learning_rate", "data.cutoff_len", "method.r"} <= {d.key for d in docs}


def test_reference_config_is_in_sync_with_the_schema():
    from sftkit.core.reference import reference_yaml

    shipped = Path(__file__).resolve().parents[1] / "configs" / "finetune_reference.yaml"
    assert shipped.read_text(encoding="utf-8") == reference_yaml(), (
        "configs/finetune_reference.yaml is stale: python -m sftkit.core.reference > configs/finetune_reference.yaml"
    )


def test_every_shipped_config_validates():
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("examples/**/config.yaml"), *root.glob("configs/*.yaml")]
    assert files, "no shipped configs found"
    for p in files:
        assert isinstance(load_config(p), RunConfig), p


def test_override_errors_name_the_override_not_the_file(tmp_path):
    p = write(tmp_path, "data:\n  train: t.jsonl\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["trian.max_steps=2"])
    msg = str(e.value)
    assert msg.startswith("command-line override trian=...") and "did you mean 'train'?" in msg
    with pytest.raises(ConfigError, match=r"^command-line override train.learning_rate=\.\.\.: train.learning_rate"):
        load_config(p, ["train.learning_rate=-1"])


def test_typo_inside_a_list_item_gets_a_suggestion(tmp_path):
    p = write(tmp_path, "data:\n  train:\n    - path: t.jsonl\n      wieght: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:4" in str(e.value) and "did you mean 'data.train.0.weight'?" in str(e.value)


def test_missing_data_file_is_named_before_training(tmp_path):
    from sftkit.core.configio import check_data_files
    from sftkit.train.recipe import run

    cfg = load_config(write(tmp_path, "data:\n  train: nosuch.jsonl\n"), [f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"data.train\[0\]: .*nosuch.jsonl does not exist"):
        check_data_files(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # nothing written


def test_alias_budget_is_on_the_values_aliases_add(tmp_path):
    """Aliases may add up to ALIAS_BUDGET values beyond those written; the same file with more
    references to the same anchor is refused, naming the first alias."""
    from sftkit.core.yamlio import ALIAS_BUDGET, read_yaml_file

    def doc(refs: int) -> str:
        return "a: &a [" + ", ".join(["x"] * 99) + "]\nb: [" + ", ".join(["*a"] * refs) + "]\n"

    p = tmp_path / "a.yaml"
    p.write_text(doc(ALIAS_BUDGET // 100), encoding="utf-8")  # each reference adds 100 values
    assert len(read_yaml_file(p)["b"]) == ALIAS_BUDGET // 100
    p.write_text(doc(ALIAS_BUDGET // 100 + 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"a\.yaml:2: YAML aliases \(\*a here and 100 more\)"):
        read_yaml_file(p)
