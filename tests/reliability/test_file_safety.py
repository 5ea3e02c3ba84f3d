"""Commands never destroy files that are not their own.

``sft generate --out`` resumes only an answers file it wrote for the same input (a
foreign JSON file, a binary file, the data file itself, or a foreign file beside OUT
is refused with exit 2 and left byte for byte unchanged); resume is keyed on each
row's content, so a different data file under the same name is answered, not
skipped; a run killed mid-way continues without duplicates or lost rows.
``sft export --out`` may not be, lie inside, or contain the run folder or the base
model folder (also through a symlink), and ``--force`` replaces only an earlier export.

Commands run through the real CLI app (typer's CliRunner; the run that is killed is a
separate ``python -m sftkit.cli`` process) on the tiny 2-layer model; "unchanged" is
checked with sha256 of every file under the test's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    returncode: int
    output: str  # stdout and stderr


def sft(*args: str | Path) -> Result:
    """The real CLI app in this process (fast: torch is imported once). PYTHONPATH=/work/old/src
    runs the same test on the old code."""
    from typer.testing import CliRunner

    from sftkit.cli import app

    r = CliRunner().invoke(app, list(map(str, args)))
    return Result(r.exit_code, r.output)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (and ``root`` itself): files by sha256, links by target."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        out[str(base.relative_to(root))] = "<dir>"
        for name in dirnames + filenames:
            p = base / name
            if p.is_symlink():
                out[str(p.relative_to(root))] = f"<link {os.readlink(p)}>"
            elif p.is_file():
                out[str(p.relative_to(root))] = sha(p)
    return out


def said(r: Result) -> str:
    return " ".join(r.output.split())  # rich wraps long lines


def write_rows(path: Path, rows: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


# -- sft generate ---------------------------------------------------------------------

FOREIGN = {
    "foreign JSON file": ("settings.json", b'{"api_key":"x"}'),  # no newline: the old resume cut it to nothing
    "binary file": ("photo.bin", bytes(range(256)) * 8 + b"\x00\x01 tail after the last newline"),
    "JSONL of another tool": ("notes.jsonl", b'{"id": 1, "text": "keep me"}\n{"id": 2, "text": "and me"}\n'),
}


@pytest.mark.parametrize("case", [*FOREIGN, "the data file itself", "a foreign file where the rejects go"])
def test_generate_refuses_files_not_its_own(case, tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "p.jsonl", [user("hi"), user("2+2?")], extra="not json\n")  # one reject
    if case in FOREIGN:
        name, content = FOREIGN[case]
        out = tmp_path / name
        out.write_bytes(content)
    elif case == "the data file itself":
        out = data
    else:
        out = tmp_path / "answers.jsonl"
        (tmp_path / "answers.jsonl.rejects.jsonl").write_bytes(b"my own list\nof things\n")
    before = tree(tmp_path)
    r = sft("generate", tiny_model_dir, "--data", data, "--out", out, "--max-new-tokens", "2")
    assert r.returncode == 2, said(r)
    assert "error:" in r.output and "choose another --out" in said(r)
    assert tree(tmp_path) == before, "every file byte for byte as it was, and nothing new"


def test_generate_resumes_a_run_killed_mid_way(tmp_path, tiny_model_dir):
    """The legitimate resume: SIGKILL during a real run (then a torn last line, as a
    crash mid-write leaves), run again: every row once, the kept answers untouched."""
    n = 16
    data = write_rows(tmp_path / "q.jsonl", [user(f"Question {i}: what is {i} plus {i}?") for i in range(n)])
    args = ["--data", data, "--batch-size", "1", "--max-new-tokens", "8"]  # 16 flushes: room to kill between
    ref = tmp_path / "ref.jsonl"
    assert sft("generate", tiny_model_dir, *args, "--out", ref).returncode == 0
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "sftkit.cli", "generate", str(tiny_model_dir), *map(str, args),
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out.is_file() and out.read_bytes().count(b"\n") >= 3) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never wrote three rows"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "killed mid-way (the run must not have finished first)"
    with out.open("ab") as f:
        f.write(b'{"source": "q.jsonl:3')  # a torn write
    kept = out.read_bytes().splitlines()[:-1]
    assert 3 <= len(kept) < n
    r = sft("generate", tiny_model_dir, *args, "--out", out)
    assert r.returncode == 0, said(r)
    assert f"{n - len(kept)} generated, {len(kept)} already" in said(r)
    assert out.read_bytes().splitlines()[: len(kept)] == kept, "the answers before the kill are kept as written"
    got = answers(out)
    assert sorted(r["source"] for r in got) == sorted(f"q.jsonl:{i + 1}" for i in range(n)), "every row exactly once"
    assert {r["source"]: r["output"] for r in got} == {r["source"]: r["output"] for r in answers(ref)}


def test_generate_same_name_different_content_is_not_skipped(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    out = tmp_path / "out.jsonl"
    write_rows(data, [user("alpha"), user("beta"), user("gamma")])
    assert sft("generate", tiny_model_dir, "--data", data, "--out", out, "--max-new-tokens", "3").returncode == 0

    write_rows(data, [user("alpha"), user("beta, edited"), user("gamma")])  # same name, one row changed
    r = sft("generate", tiny_model_dir, "--data", data, "--out", out, "--max-new-tokens", "3")
    assert r.returncode == 0, said(r)
    assert "1 generated, 2 already" in said(r) and "1 earlier answers dropped" in said(r)
    rows = {r["source"]: r for r in answers(out)}
    assert len(rows) == 3 and rows["d.jsonl:2"]["messages"][-1]["content"] == "beta, edited"

    write_rows(data, [user("one"), user("two"), user("three")])  # same name, another data set altogether
    before = tree(tmp_path)
    r = sft("generate", tiny_model_dir, "--data", data, "--out", out, "--max-new-tokens", "3")
    assert r.returncode == 2 and "answers another input" in said(r), said(r)
    assert tree(tmp_path) == before, "the earlier answers are kept, byte for byte"


# -- sft export -----------------------------------------------------------------------


@pytest.fixture
def run_and_base(tmp_path, tiny_model_dir) -> tuple[Path, Path]:
    """A LoRA run folder (tmp/runs/r) on its own copy of the base model (tmp/models/base),
    each alone in its parent, so that "above" cases touch nothing else."""
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tmp_path / "models" / "base"
    shutil.copytree(tiny_model_dir, base)
    run = tmp_path / "runs" / "r"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(run / "adapter")
    cfg = {"name": "r", "model": {"name_or_path": str(base), "dtype": "float32"}, "method": {"type": "lora"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run, base


OVERLAPS = {
    "equal to the run": lambda run, base: run,
    "inside the run": lambda run, base: run / "exported",
    "above the run": lambda run, base: run.parent,
    "equal to the base model": lambda run, base: base,
    "inside the base model": lambda run, base: base / "merged",
    "above the base model": lambda run, base: base.parent,
}


@pytest.mark.parametrize("case", [*OVERLAPS, "a symlink to the run"])
def test_export_out_never_overlaps_the_run_or_the_base(case, run_and_base, tmp_path):
    run, base = run_and_base
    if case in OVERLAPS:
        out = OVERLAPS[case](run, base)
    else:
        out = tmp_path / "link"
        out.symlink_to(run, target_is_directory=True)
    before = tree(tmp_path)
    r = sft("export", run, "--out", out, "--force")
    assert r.returncode == 2, said(r)
    assert ("run folder" in said(r) or "base model folder" in said(r))
    assert tree(tmp_path) == before, "the run and the base model are intact"


def test_export_force_replaces_only_its_own_export(run_and_base, tmp_path):
    run, _ = run_and_base
    out = tmp_path / "exported"
    assert sft("export", run, "--out", out).returncode == 0
    first = tree(out)
    r = sft("export", run, "--out", out, "--force")
    assert r.returncode == 0, said(r)
    assert set(tree(out)) == set(first), "an earlier export is replaced by the new one"
    assert not list(tmp_path.glob(".exported*")), "no temporary or set-aside folder is left behind"

    mine = tmp_path / "my_documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years of work")
    (mine / "config.json").write_text("{}")
    before = tree(tmp_path)
    r = sft("export", run, "--out", mine, "--force")
    assert r.returncode == 2 and "did not write" in said(r), said(r)
    assert tree(tmp_path) == before

    unverified = tmp_path / "again.unverified"  # where a failed verification would go: also only its own
    unverified.mkdir()
    (unverified / "notes.txt").write_text("not an export")
    before = tree(tmp_path)
    r = sft("export", run, "--out", tmp_path / "again")
    assert r.returncode == 2 and "did not write" in said(r), said(r)
    assert tree(tmp_path) == before


def test_overlap_is_judged_on_real_paths(tmp_path):
    from sftkit.core.errors import RefusedPath
    from sftkit.core.safepaths import refuse_overlap

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "runs", target_is_directory=True)
    for out in (run / ".." / "r", tmp_path / "alias" / "r" / "x", tmp_path / "alias", Path("/")):
        with pytest.raises(RefusedPath, match="run folder"):
            refuse_overlap(out, {"run folder": run})
    for out in (tmp_path / "runs" / "r2", tmp_path / "runs" / "r-export", tmp_path / "alias" / "other"):
        refuse_overlap(out, {"run folder": run})  # siblings, even with a shared name prefix, are fine
