"""The GPU container recipe (``Dockerfile``, ``.dockerignore``).

The image is built and run only where a docker engine answers (``docker info``); elsewhere that test is
skipped with the reason (this workplace has the docker client but no engine). What can be checked
without an engine is checked always: the build context the engine would receive holds every source the
Dockerfile copies and nothing else of the repository, and the recipe keeps its promises (CUDA base, the
wheel with the ``gpu`` extra, a non-root user, the HF cache as a volume, ``sft`` as the entrypoint)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import sftkit

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (excludes, regex), in order; the last rule that matches a path decides (docker's rule)."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((not line.startswith("!"), _regex(line.lstrip("!").strip("/"))))
    return rules


def _sent(path: str) -> bool:
    """Would the engine receive ``path``? A rule on a folder applies to everything inside it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, rx in _ignore_rules():
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = excludes
    return not excluded


def _copied_sources() -> list[str]:
    """The context paths the Dockerfile's COPY lines read (not the ones copying between stages)."""
    out = []
    for line in DOCKERFILE.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            out += words[1:-1]
    return out


def test_the_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    copied = _copied_sources()
    assert set(copied) == {"pyproject.toml", "README.md", "README_zh.md", "MANIFEST.in", "src"}
    for name in copied:
        assert (ROOT / name).exists(), name
        assert _sent(name), f"{name} is copied but .dockerignore keeps it out of the context"
    assert _sent("src/sftkit/cli/app.py") and _sent("src/sftkit/examples/api_assistant/train.jsonl")
    for kept_out in (".venv/bin/python", "runs/demo/adapter/adapter_model.safetensors", ".git/HEAD",
                     "tests/test_wheel.py", "bench/train_throughput.py", "src/sftkit/core/__pycache__/config.pyc",
                     "src/sftkit/data/augment.pyc", "src/sftkit_llm.egg-info/PKG-INFO", "examples", "Dockerfile"):
        assert not _sent(kept_out), kept_out


def test_the_recipe_keeps_its_promises() -> None:
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\w.]+-runtime-ubuntu", DOCKERFILE, re.M)
    assert re.search(r"^ARG EXTRAS=.*\bgpu\b", DOCKERFILE, re.M)
    assert '"sftkit-llm[$EXTRAS] @ file://' in DOCKERFILE  # our wheel, under our name, with the extras
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    home = re.search(r"HF_HOME=(\S+)", DOCKERFILE).group(1)
    assert f'VOLUME ["{home}"]' in DOCKERFILE
    assert re.search(r'^ENTRYPOINT \[.*"sft"\]', DOCKERFILE, re.M)
    assert re.search(r"^STOPSIGNAL SIGINT$", DOCKERFILE, re.M)  # sft train checkpoints on SIGINT only


def _engine() -> str | None:
    """None when a docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    res = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        why = next((ln.strip() for ln in res.stderr.splitlines() if ln.strip()), f"exit {res.returncode}")
        return f"no docker engine (`docker info`: {why})"
    return None


@pytest.mark.slow
def test_the_image_builds_and_runs_sft() -> None:
    why = _engine()
    if why:
        pytest.skip(why)
    tag = f"sftkit-llm:test-{os.getpid()}"

    def docker(*args: str, timeout: float = 600) -> str:
        res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        return res.stdout

    docker("build", "-t", tag, str(ROOT), timeout=3600)
    try:
        assert docker("run", "--rm", tag, "--version") == f"sftkit-llm {sftkit.__version__}\n"
        assert "qwen2_chatml" in docker("run", "--rm", tag, "template", "list")
        assert docker("run", "--rm", "--entrypoint", "id", tag, "-u").strip() != "0"
        probe = "import torch, bitsandbytes, deepspeed; print(torch.version.cuda)"
        assert docker("run", "--rm", "--entrypoint", "python", tag, "-c", probe).strip() not in ("", "None")
        if '"nvidia"' in docker("info", "--format", "{{json .Runtimes}}"):
            gpu = "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name())"
            assert docker("run", "--rm", "--gpus", "all", "--entrypoint", "python", tag, "-c", gpu).strip()
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=300, check=False)
