"""The distribution is ``sftkit-llm``, its version is written once, and ``sft`` refuses to start beside the
unrelated PyPI project that also installs a top-level ``sftkit`` package (a real ``python -m sftkit.cli``
subprocess each time; the other project is a fake dist-info in a temporary site folder, shaped like its
real 0.4.3 wheel: made by uv, so no top_level.txt, a RECORD and a ``sftkit`` console script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sftkit

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _sft(*args: str, pythonpath: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sftkit.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=False)


def _fake_dist(site: Path, name: str, version: str, *, script: str, top_level: bool) -> Path:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.3\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    (info / "RECORD").write_text(f"sftkit/__init__.py,,0\nsftkit/__main__.py,,0\nsftkit/http/__init__.py,,564\n"
                                 f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[console_scripts]\n{script}\n", encoding="utf-8")
    if top_level:
        (info / "top_level.txt").write_text("sftkit\n", encoding="utf-8")
    return info


def test_the_distribution_name_and_one_version(tmp_path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "sftkit-llm"
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sftkit.__version__"}
    assert project["project"]["scripts"] == {"sft": "sftkit.cli:main"}  # the command and import name stay
    for flag in ("--version", "-V"):
        res = _sft(flag, pythonpath=[SRC], cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"sftkit-llm {sftkit.__version__}\n"


@pytest.mark.parametrize("top_level", [False, True], ids=["uv-wheel", "setuptools-wheel"])
def test_another_sftkit_beside_ours_stops_sft(tmp_path, top_level) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "sftkit", "0.4.3", script="sftkit = sftkit.devel:cli_main", top_level=top_level)
    res = _sft("template", "list", pythonpath=[SRC, site], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: another project's `sftkit` package"), res.stderr
    assert f"sftkit 0.4.3 in {site}" in lines[0]
    assert "`pip uninstall sftkit`, then `pip install --force-reinstall --no-deps sftkit-llm`" in lines[0]


def test_the_other_project_written_over_ours_is_named_not_an_import_error(tmp_path) -> None:
    """pip installing the other wheel over ours replaces sftkit/__init__.py with its empty one: without the
    check, `sft` would die on `from sftkit import __version__` with a traceback."""
    site = tmp_path / "site"
    shutil.copytree(SRC / "sftkit", site / "sftkit", ignore=shutil.ignore_patterns("__pycache__"))
    for shared in ("__init__.py", "__main__.py"):
        (site / "sftkit" / shared).write_text("", encoding="utf-8")
    _fake_dist(site, "sftkit", "0.4.3", script="sftkit = sftkit.devel:cli_main", top_level=False)
    res = _sft("--help", pythonpath=[site], cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "pip uninstall sftkit" in res.stderr
    # the same files without the other project's record: our own broken install, a plain traceback
    shutil.rmtree(next(site.glob("*.dist-info")))
    res = _sft("--help", pythonpath=[site], cwd=tmp_path)
    assert res.returncode == 1 and "cannot import name '__version__'" in res.stderr


def test_this_project_under_its_old_name_is_not_a_clash(tmp_path) -> None:
    """An editable install from before the rename (distribution `sftkit`, script `sft = sftkit.cli:main`)
    is the same code: no refusal."""
    site = tmp_path / "site"
    _fake_dist(site, "sftkit", "0.1.0", script="sft = sftkit.cli:main", top_level=True)
    res = _sft("--version", pythonpath=[SRC, site], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
