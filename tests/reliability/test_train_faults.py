"""Training faults on the tiny model, in real processes.

* SIGKILL at 5 seeded random points (a step end, from outside at any moment, while a
  checkpoint is being written, after it is written but before it is marked complete,
  while the final model is written), each resumed with ``sft train CONFIG --resume``:
  final weights and loss curve equal an uninterrupted run; no incomplete checkpoint loaded.
* Ctrl-C: checkpoint at the end of the step, exit 130 with the resume command; a second
  Ctrl-C stops at once.
* NaN loss (a poisoned embedding row that only one data row uses): the run stops at that
  step naming the batch's rows, exit non-zero, the bad step is not saved.
* Unwritable output folder / full disk: fails before anything is loaded; a disk filling up
  mid-run: a clear error, and the run resumes once there is space.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import TrainerCallback

from sftkit.core.configio import load_config
from sftkit.core.errors import TrainError
from sftkit.train.callbacks import COMPLETE, last_complete_checkpoint
from sftkit.train.faults import NonFiniteLoss
from sftkit.train.recipe import run
from trainlib import Child, curve, logged_step, max_weight_diff, rows, sft, wait_for, write_workdir

STEPS = ["train.max_steps=8", "train.save_steps=2", "train.per_device_train_batch_size=4"]
TOL = 1e-5  # float tolerance for weights (runs are deterministic on CPU; this allows thread-order noise)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The uninterrupted 8-step run every interrupted run must reproduce."""
    d = tmp_path_factory.mktemp("reference")
    cfg = write_workdir(d, tiny_model_dir)
    return run(load_config(cfg, [*STEPS, f"output_dir={d / 'run'}"])).run_dir


def _same_run(run_dir: Path, reference: Path) -> None:
    assert max_weight_diff(run_dir, reference) < TOL
    got, want = curve(run_dir, 7), curve(reference, 7)
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [x for _, x in got] == pytest.approx([x for _, x in want], rel=1e-5)
    for ckpt in (run_dir / "checkpoints").glob("checkpoint-*"):
        assert (ckpt / COMPLETE).is_file(), f"{ckpt} left without its completion marker"


def _kill_points(seed: int) -> list[str]:
    """5 kill points, seeded: one of each kind, at random steps."""
    rng = random.Random(seed)
    points = [f"step:{rng.randint(1, 7)}", f"external:{rng.randint(2, 6)}", f"mid_save:{rng.choice([2, 4, 6, 8])}",
              f"before_marker:{rng.choice([2, 4, 6, 8])}", "final"]
    rng.shuffle(points)
    return points


def _kill(workdir: Path, cfg: Path, out: Path, point: str) -> None:
    kind, _, k = point.partition(":")
    argv = ["train", str(cfg), *STEPS, f"output_dir={out}"]
    if kind == "external":  # SIGKILL from outside, whatever the trainer is doing at that moment
        child = Child(argv, workdir, workdir / "kill.log")
        wait_for(lambda: logged_step(out) >= int(k), 120, f"step {k} to be logged")
        child.kill()
        code = child.wait()
    else:
        code, _ = sft(argv, workdir, workdir / "kill.log", KILL_AT=point)
    assert code == -signal.SIGKILL, (point, (workdir / "kill.log").read_text()[-3000:])
    assert not (out / "model").exists()


def _check_kill_left(out: Path, point: str) -> Path | None:
    """What the kill left behind, and the checkpoint a resume may load."""
    kind, _, k = point.partition(":")
    ckpts = out / "checkpoints"
    if kind in ("mid_save", "before_marker"):  # the kill landed inside the save of checkpoint-k
        partial = ckpts / f"checkpoint-{k}"
        assert partial.is_dir() and not (partial / COMPLETE).exists()
    if kind == "final":
        assert (out / ".model.tmp").is_dir()
    return last_complete_checkpoint(ckpts)


@pytest.mark.slow
@pytest.mark.parametrize("point", _kill_points(seed=20260))
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, reference, point):
    cfg = write_workdir(tmp_path, tiny_model_dir)
    out = tmp_path / "run"
    _kill(tmp_path, cfg, out, point)
    loadable = _check_kill_left(out, point)
    incomplete = [p.name for p in (out / "checkpoints").glob("checkpoint-*") if not (p / COMPLETE).exists()] \
        if (out / "checkpoints").is_dir() else []

    code, log = sft(["train", str(cfg), *STEPS, f"output_dir={out}", "--resume"], tmp_path, tmp_path / "resume.log")
    assert code == 0, log[-3000:]
    if loadable is not None:
        assert f"resuming from {loadable}" in log
    else:
        assert "no complete checkpoint" in log and "starting from step 0" in log
    for name in incomplete:  # removed, never loaded
        assert f"removing incomplete checkpoint {name}" in log
    _same_run(out, reference)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes_exactly(tmp_path, tiny_model_dir, reference):
    """The real `sft train` process gets SIGINT after step 3 is logged."""
    cfg, out, steps = write_workdir(tmp_path, tiny_model_dir), tmp_path / "run", STEPS
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with (tmp_path / "sft.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sftkit.cli", "train", str(cfg), *steps,
                                 f"output_dir={out}"], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(lambda: logged_step(out) >= 3 or proc.poll() is not None, 240, "training to start")
            proc.send_signal(signal.SIGINT)
            code = proc.wait(120)
        finally:
            proc.kill()
    text = (tmp_path / "sft.log").read_text().replace("\n", "")  # undo rich's wrapping of long paths
    assert code == 130, text[-3000:]
    assert "Traceback" not in text
    stopped = int(text.split("interrupted by Ctrl-C at step ")[1].split()[0])
    assert 3 <= stopped < 8
    ckpt = out / "checkpoints" / f"checkpoint-{stopped}"
    assert f"checkpoint saved in {ckpt}" in text and "--resume" in text
    assert (ckpt / COMPLETE).is_file() and not (out / "model").exists()
    assert logged_step(out) == stopped  # stopped at the end of that step, nothing after it

    code, log = sft(["train", str(cfg), *steps, f"output_dir={out}", "--resume"], tmp_path, tmp_path / "r.log")
    assert code == 0 and f"resuming from {ckpt}" in log, log[-3000:]
    _same_run(out, reference)


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once(tmp_path, tiny_model_dir):
    cfg, out, steps = write_workdir(tmp_path, tiny_model_dir), tmp_path / "run", STEPS
    child = Child(["train", str(cfg), *steps, f"output_dir={out}"], tmp_path, tmp_path / "sft.log")
    wait_for(lambda: logged_step(out) >= 2, 240, "training to start")
    os.kill(child.proc.pid, signal.SIGINT)
    wait_for(lambda: "Ctrl-C: saving a checkpoint" in child.output(), 60, "the first Ctrl-C to be acknowledged")
    os.kill(child.proc.pid, signal.SIGINT)
    assert child.wait(120) == 130, child.output()[-3000:]
    text = child.output()
    assert "Traceback" not in text and not (out / "model").exists() and logged_step(out) < 8
    # the second press arrives during the step (or the save) the first one was waiting for
    assert "stopped at once by a second Ctrl-C" in text or "interrupted" in text


# -- NaN / inf -------------------------------------------------------------------------------


def _poisoned_workdir(tmp_path: Path, tokenizer) -> tuple[Path, str]:
    """An untied tiny model whose embedding row for one token is NaN; only data row 6 uses
    that token, so only the batch holding row 6 produces a NaN loss (a real NaN, from the
    real forward pass)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftkit.core.conversation import Conversation
    from sftkit.templates.hf import HFChatTemplate
    from sftkit.templates.render import Renderer

    data = rows(16)
    data[5]["messages"][0]["content"] = "Xylophone quartz 墨水 zebra"
    r = Renderer(HFChatTemplate(tokenizer), tokenizer, cutoff_len=128)
    ids = [set(r.render(Conversation.from_messages(x["messages"])).input_ids) for x in data]
    unique = sorted(ids[5] - set().union(*ids[:5], *ids[6:]))
    assert unique, "the poison row needs a token no other row has"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight[unique[0]] = float("nan")
    model.save_pretrained(tmp_path / "poisoned")
    tokenizer.save_pretrained(tmp_path / "poisoned")
    cfg_path = write_workdir(tmp_path, tmp_path / "poisoned")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in data))
    return cfg_path, f"{tmp_path / 'train.jsonl'}:6"


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_the_batch_rows(tmp_path, tokenizer):
    cfg, poison = _poisoned_workdir(tmp_path, tokenizer)
    with pytest.raises(NonFiniteLoss) as e:
        run(load_config(cfg, [*STEPS, f"output_dir={tmp_path / 'run'}"]))
    msg = str(e.value)
    step = int(msg.split(" at step ")[1].split(",", maxsplit=1)[0])
    assert "became nan" in msg and poison in msg
    batch = {s for s in msg.split("built from ")[1].split(";", maxsplit=1)[0].split(", ")}
    assert len(batch) == 4 and all(s.startswith(f"{tmp_path / 'train.jsonl'}:") for s in batch)  # the whole batch
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) == step - 1 and all(math.isfinite(x) for x in losses)  # every earlier step was fine
    assert not (tmp_path / "run" / "checkpoints" / f"checkpoint-{step}").exists()  # the bad step is never saved
    assert not (tmp_path / "run" / "model").exists()

    code, log = sft(["train", str(cfg), *STEPS, f"output_dir={tmp_path / 'cli'}"], tmp_path, tmp_path / "cli.log")
    assert code == 2 and f"training loss became nan at step {step}" in log and poison in log, log[-2000:]


# -- disk ------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real small filesystem (root only: skips elsewhere)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fails_before_loading(cfg: Path, out: Path, match: str) -> TrainError:
    """The run fails with ``match`` and nothing was prepared: no data report, no template
    check, no model (those come before the weights load)."""
    with pytest.raises(TrainError, match=match) as e:
        run(load_config(cfg, [*STEPS, f"output_dir={out}"]))
    for later in ("data_report.json", "template_check.json", "checkpoints", "model"):
        assert not (out / later).exists()
    assert "nothing was loaded or trained" in str(e.value)
    return e.value


def test_output_dir_that_cannot_be_created(tmp_path, tiny_model_dir):
    cfg = write_workdir(tmp_path, tiny_model_dir)
    (tmp_path / "a_file").write_text("x")
    _fails_before_loading(cfg, tmp_path / "a_file" / "run", r"not writable \(.*a_file is a file, not a folder\)")
    _fails_before_loading(cfg, Path("/proc/sftkit-run"), "not writable")


def test_read_only_output_dir(tmp_path, tiny_model_dir):
    cfg = write_workdir(tmp_path, tiny_model_dir)
    if os.geteuid() != 0:  # permissions bind a normal user; root ignores them, so root gets a read-only mount
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
        _fails_before_loading(cfg, tmp_path / "ro" / "run", r"not writable \(Permission denied\)")
        return
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        _fails_before_loading(cfg, ro / "run", r"not writable \(Read-only file system\)")


def test_full_disk_fails_fast(tmp_path, tiny_model_dir):
    cfg = write_workdir(tmp_path, tiny_model_dir)
    with tmpfs(tmp_path / "small", "1m") as small:
        err = _fails_before_loading(cfg, small / "run", r"MB free, but this run's checkpoints need about \d+ MB")
        assert "free some space or choose another output_dir" in str(err)


class FillDisk(TrainerCallback):
    """After checkpoint-2 is complete, fill the filesystem to the last byte."""

    def __init__(self, filler: Path) -> None:
        self.filler = filler

    def on_save(self, args, state, control, **kw):
        if state.global_step == 2:
            with contextlib.suppress(OSError), self.filler.open("wb") as f:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()


@pytest.mark.slow
def test_disk_filling_up_mid_run_is_clear_and_resumable(tmp_path, tiny_model_dir, reference):
    cfg = write_workdir(tmp_path, tiny_model_dir)
    with tmpfs(tmp_path / "disk", "200m") as disk:  # room for this run (~170 MB), until FillDisk takes it
        out, filler = disk / "run", disk / "filler"
        with pytest.raises(TrainError, match=r"disk holding .* is full") as e:
            run(load_config(cfg, [*STEPS, f"output_dir={out}"]), callbacks=[FillDisk(filler)])
        assert f"the last complete checkpoint is {out / 'checkpoints' / 'checkpoint-2'}" in str(e.value)
        assert "--resume" in str(e.value)
        filler.unlink()
        resumed = run(load_config(cfg, [*STEPS, f"output_dir={out}"]), resume="auto")
        assert resumed.global_step == 8
        _same_run(out, reference)
        shutil.rmtree(out)
