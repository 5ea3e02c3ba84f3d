"""``sft train`` writes only into a folder that is new, empty, or a run of this config.

Real ``sft`` processes on the tiny model (1-2 steps):

* a folder holding someone's files (the issue's notes.txt, config.yaml, report.html,
  adapter/WEIGHTS.txt) is refused with exit 2, byte for byte untouched, with or without
  --resume / --overwrite;
* a finished run whose checkpoints were pruned is refused without a flag (the message
  names --resume and --overwrite); --resume says it is finished and changes nothing;
  --overwrite moves the old run aside intact and trains a new one with no stale eval.json;
  --resume with more steps continues it and drops the evaluation of the old weights;
* a template error (unknown name, blocked by the sandbox, contract check failed) or a data
  error leaves no folder behind;
* a folder the web console prepared (launch.yaml, console.log) is trained into, its files kept;
* ``sft demo``'s way (``Overwrite.DELETE`` through the pipeline) re-runs over its own
  previous run, and refuses a foreign folder before any step; ``sft run`` refuses an
  earlier run unless ``--overwrite``, which moves it aside.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sftkit.core.configio import load_config
from sftkit.train.recipe import run
from trainlib import sft, write_workdir

STEPS = ["method.type=lora", "train.max_steps=2", "train.save_steps=1", "train.per_device_train_batch_size=4"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder under ``root`` (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def moved_aside(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}.old-*"))


def train(work: Path, out: Path, *extra: str, log: str = "sft.log") -> tuple[int, str]:
    return sft(["train", str(work / "cfg.yaml"), *STEPS, f"output_dir={out}", *extra], work, work / log)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir) -> Path:
    d = tmp_path_factory.mktemp("runfolder")
    write_workdir(d, tiny_model_dir)
    return d


@pytest.fixture(scope="module")
def finished(work) -> Path:
    """A finished 2-step run of ``work``'s config, evaluated once (eval.json)."""
    out = work / "finished"
    run(load_config(work / "cfg.yaml", [*STEPS, f"output_dir={out}"]))
    (out / "eval.json").write_text(json.dumps({"model": {"exact_match": 0.5}}))
    return out


def _copy(src: Path, dst: Path, prune: bool) -> Path:
    shutil.copytree(src, dst)
    if prune:
        shutil.rmtree(dst / "checkpoints")
    return dst


def test_foreign_folder_is_refused_and_left_byte_for_byte(work, tmp_path):
    out = tmp_path / "mine"
    (out / "adapter").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes\n")
    (out / "config.yaml").write_text("not: sftkit\n")
    (out / "report.html").write_text("<p>mine</p>")
    (out / "adapter" / "WEIGHTS.txt").write_text("precious")
    before = snapshot(out)
    for flags in ([], ["--overwrite"], ["--resume"]):
        code, log = train(work, out, *flags, log=f"foreign{len(flags)}.log")
        assert code == 2, log[-2000:]
        assert "is not an sftkit run folder" in log and "notes.txt" in log and "nothing was written" in log, log
        assert snapshot(out) == before, flags
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], flags  # nothing added or moved beside it


def test_finished_run_is_refused_without_a_flag(work, finished, tmp_path):
    out = _copy(finished, tmp_path / "run", prune=True)
    before = snapshot(out)
    code, log = train(work, out)
    assert code == 2, log[-2000:]
    assert "holds a finished run" in log and "--resume" in log and "--overwrite" in log, log
    assert snapshot(out) == before and not moved_aside(out)


def test_resume_on_a_finished_run_says_so_and_changes_nothing(work, finished, tmp_path):
    out = _copy(finished, tmp_path / "run", prune=True)
    before = snapshot(out)
    code, log = train(work, out, "--resume")
    assert code == 0, log[-2000:]
    assert "already finished training with this config (step 2); nothing to do" in log, log
    assert snapshot(out) == before and not moved_aside(out)


def test_overwrite_moves_the_old_run_aside_intact(work, finished, tmp_path):
    out = _copy(finished, tmp_path / "run", prune=True)
    before = snapshot(out)
    code, log = train(work, out, "--overwrite")
    assert code == 0, log[-2000:]
    [old] = moved_aside(out)
    assert snapshot(old) == before  # the old run, eval.json included, exactly as it was
    assert f"moved the previous run to {old}" in log
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "train_summary.json").is_file()
    assert not (out / "eval.json").exists()  # nothing of the old run mixed into the new one


def test_resume_with_more_steps_continues_and_drops_the_old_evaluation(work, finished, tmp_path):
    out = _copy(finished, tmp_path / "run", prune=False)
    code, log = train(work, out, "train.max_steps=3", "--resume")
    assert code == 0, log[-2000:]
    assert "resuming from" in log and "checkpoint-2" in log
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 3
    assert not (out / "eval.json").exists()  # it scored the 2-step weights


def test_resume_and_overwrite_together_are_refused(work, tmp_path):
    code, log = train(work, tmp_path / "run", "--resume", "--overwrite")
    assert code == 2 and "give one of them" in log, log[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["unknown_template", "blocked_template", "template_contract", "no_usable_rows"])
def test_template_or_data_error_leaves_no_folder(work, tmp_path, case):
    if case == "template_contract":  # renders the words but no end-of-turn: the contract check fails
        (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
        extra = [f"template={tmp_path / 'plain.jinja'}"]
    elif case == "blocked_template":  # reaches for Python internals: the template sandbox refuses it
        (tmp_path / "evil.jinja").write_text("{{ ''.__class__.__mro__ }}{% for m in messages %}{{ m['content'] }}"
                                             "{% endfor %}")
        extra = [f"template={tmp_path / 'evil.jinja'}"]
    elif case == "unknown_template":
        extra = ["template=no_such_template"]
    else:
        (tmp_path / "bad.jsonl").write_text('{"foo": 1}\n{"bar": 2}\n')
        extra = [f"data.train={tmp_path / 'bad.jsonl'}"]
    out = tmp_path / "run"
    code, log = train(work, out, *extra)
    assert code == 2, log[-2000:]
    assert "Traceback" not in log
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_folder_prepared_by_the_console_is_trained_into(work, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "launch.yaml").write_text((work / "cfg.yaml").read_text())
    (out / "console.log").write_text("== sftkit console: train\n")
    code, log = train(work, out)
    assert code == 0, log[-2000:]
    assert (out / "console.log").read_text() == "== sftkit console: train\n"
    assert (out / "train_summary.json").is_file() and (out / "sftkit_run.json").is_file()


def _pipeline_config(work: Path) -> Path:
    rows = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    (work / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    cfg = work / "pipe.yaml"
    cfg.write_text((work / "cfg.yaml").read_text().replace("  train: train.jsonl\n",
                                                           "  train: train.jsonl\n  test: test.jsonl\n"))
    return cfg


def test_demo_reruns_over_its_own_run_and_refuses_a_foreign_folder(work, tmp_path):
    from sftkit.core.errors import RunDirError
    from sftkit.core.rundir import Overwrite
    from sftkit.pipeline import run_pipeline

    cfg, out = _pipeline_config(work), tmp_path / "demo"
    over = [*STEPS, "eval.max_new_tokens=2", "eval.forgetting_check=false", f"output_dir={out}"]
    run_pipeline(cfg, over, overwrite=Overwrite.DELETE)
    (out / "left_by_first_run.txt").write_text("x")  # a file only the first run's folder has
    again = run_pipeline(cfg, over, overwrite=Overwrite.DELETE)
    assert Path(again["run_dir"]) == out and (out / "eval.json").is_file()
    assert not (out / "left_by_first_run.txt").exists() and not moved_aside(out)

    with pytest.raises(RunDirError, match=r"holds an earlier run.*sft run --overwrite"):  # `sft run` keeps it
        run_pipeline(cfg, over)
    before = snapshot(out)
    code, log = sft(["run", str(cfg), *over, "--overwrite"], work, tmp_path / "run.log")
    assert code == 0, log[-2000:]
    [old] = moved_aside(out)
    assert snapshot(old) == before and (out / "eval.json").is_file()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an sftkit run folder"):
        run_pipeline(cfg, [*over[:-1], f"output_dir={mine}"], overwrite=Overwrite.DELETE)
    assert snapshot(mine) == {"notes.txt": b"mine"}
