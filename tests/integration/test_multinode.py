"""Two "nodes" on one host: separate launcher processes on 127.0.0.1 (gloo, one rank each), meeting
at a real rendezvous, like two machines would.

* DDP, each node with its own output_dir (per-node storage) and its own prepared-data cache: plain
  torchrun runs are SIGKILLed at step 3 (by a test-only trigger, ``mn_entry.py``); checkpoint-2
  holds the weights of one process on the same global batch after 2 steps, and
  ``sft train --nnodes 2 --resume`` on both ends where that one process ends after 4 steps.
* DeepSpeed ZeRO-2, one shared output_dir: the same, started by DeepSpeed's own per-node launcher
  (what its runner starts on each host of a hostfile), resumed by ``sft train --nnodes 2``.
* Failures: a node that cannot reach the rendezvous, a rendezvous a node never joins, and a node
  with another config and another sftkit stop with one sentence, within the timeout.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import sftkit

pytestmark = pytest.mark.slow

SRC = Path(sftkit.__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("mn_entry.py")
STEPS = ["train.max_steps=4", "train.save_steps=2"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workdir(work: Path) -> Path:
    # 8 rows: every optimizer step sees all of them however they are split over the ranks, so one process
    # with batch 8 and two with batch 4 compute the same gradients (dropout off: ranks draw differently)
    rows = [{"messages": [{"role": "user", "content": f"问题 {i}"},
                          {"role": "assistant", "content": f"回答 {i}" * (1 + i)}]} for i in range(8)]
    (work / "t.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return work / "c.yaml"


def _config(work: Path, model: Path) -> Path:
    cfg = _workdir(work)
    cfg.write_text(f"model:\n  name_or_path: {model}\ndata:\n  train: t.jsonl\nmethod:\n  dropout: 0.0\n"
                   "train:\n  per_device_train_batch_size: 4\n  logging_steps: 1\n  learning_rate: 1.0e-2\n"
                   "  lr_scheduler_type: constant\n  warmup_ratio: 0\n")
    return cfg


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _nodes(cmds: list[list[str]], envs: list[dict[str, str]], cwd: Path, timeout: float = 600) -> list[tuple[int, str]]:
    """Start every node at once; (exit code, output) of each."""
    procs = [subprocess.Popen(c, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, e in zip(cmds, envs, strict=True)]
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, text))
    return out


def _sft(cfg: Path, node: int, port: int, *extra: str, timeout: int = 120) -> list[str]:
    return [sys.executable, "-m", "sftkit.cli", "train", str(cfg), *extra, "--nnodes", "2", "--node-rank", str(node),
            "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-timeout", str(timeout)]


def _torchrun(cfg: Path, node: int, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
            "--rdzv-conf", f"is_host={str(node == 0).lower()}", str(ENTRY), "train", str(cfg), *extra]


def _deepspeed(cfg: Path, node: int, port: int, *extra: str) -> list[str]:
    hosts = base64.urlsafe_b64encode(json.dumps({"node0": [0], "node1": [0]}).encode()).decode()
    return [sys.executable, "-m", "deepspeed.launcher.launch", f"--world_info={hosts}", f"--node_rank={node}",
            "--master_addr=127.0.0.1", f"--master_port={port}", "--no_local_rank", str(ENTRY), "train", str(cfg),
            *extra, "--rdzv-timeout", "120"]


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def _same(got: Path, want: Path) -> None:
    a, b = _adapter(got), _adapter(want)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert (a[k] - b[k]).abs().max().item() < 1e-4, k  # gradients were averaged over the two nodes


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir) -> Path:
    """One process, batch 8: the run both nodes together must reproduce."""
    from sftkit.core.configio import load_config
    from sftkit.train.recipe import run

    work = tmp_path_factory.mktemp("single")
    cfg = _config(work, tiny_model_dir)
    return run(load_config(cfg, [*STEPS, "train.per_device_train_batch_size=8", f"output_dir={work / 'run'}"])).run_dir


def _killed_then_resumed(work: Path, cfg: Path, start, outs: list[Path], envs: list[dict], *extra: str) -> str:
    """Both nodes SIGKILLed at step 3 (after checkpoint-2), then both resumed with ``sft train``."""
    port = _port()
    got = _nodes([start(cfg, n, port, *STEPS, f"output_dir={outs[n]}", *extra) for n in (0, 1)],
                 [{**e, "KILL_AT": "step:3"} for e in envs], work)
    assert all(code != 0 for code, _ in got), got[0][1][-3000:]
    for out in outs:
        assert not (out / "train_summary.json").exists()
    port = _port()
    got = _nodes([_sft(cfg, n, port, *STEPS, f"output_dir={outs[n]}", *extra, "--resume") for n in (0, 1)], envs,
                 work)
    for code, text in got:
        assert code == 0, text[-4000:]
    return "".join(text for _, text in got)


def test_ddp_nodes_with_their_own_disks_equal_one_process_and_resume_exactly(tmp_path, tiny_model_dir, single):
    cfg = _config(tmp_path, tiny_model_dir)
    outs = [tmp_path / "disk0" / "run", tmp_path / "disk1" / "run"]  # per-node storage: no folder is shared
    homes = [tmp_path / "home0", tmp_path / "home1"]
    envs = [_env(SFTKIT_HOME=str(h), SFTKIT_PREPARED_CACHE="1") for h in homes]
    log = _killed_then_resumed(tmp_path, cfg, _torchrun, outs, envs)
    assert "resuming from" in log
    for out in outs:  # each node keeps a full copy: checkpoints, final weights, records
        assert (out / "checkpoints" / "checkpoint-2" / "sftkit_complete.json").is_file()
        _same(out / "checkpoints" / "checkpoint-2", single / "checkpoints" / "checkpoint-2")  # after N=2 steps
        _same(out / "adapter", single / "adapter")  # killed at step 3, resumed, ended at step 4
        assert json.loads((out / "train_summary.json").read_text())["global_step"] == 4
        assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    for home in homes:  # prepared once per node (by its local rank 0), in that node's cache
        assert len(list((home / "prepared").glob("*.pkl"))) == 1


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_zero2_nodes_on_shared_storage_equal_one_process_and_resume_exactly(tmp_path, tiny_model_dir, single):
    cfg = _config(tmp_path, tiny_model_dir)
    out = tmp_path / "shared" / "run"
    _killed_then_resumed(tmp_path, cfg, _deepspeed, [out, out], [_env(), _env()], "train.deepspeed=zero2")
    ckpt = out / "checkpoints" / "checkpoint-2"
    assert len(list((ckpt / "global_step2").glob("*zero_pp_rank_*optim_states.pt"))) == 2  # both ranks' shards
    _same(ckpt, single / "checkpoints" / "checkpoint-2")
    _same(out / "adapter", single / "adapter")
    assert not (out / ".sftkit-storage-probe").exists()


def _one_line_error(code: int, text: str) -> str:
    assert code == 2, text[-3000:]
    assert "Traceback" not in text and "frame #" not in text, text[-3000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


def test_unreachable_rendezvous_and_a_node_that_never_joins(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir)
    nobody, lonely = _port(), _port()
    got = _nodes([_sft(cfg, 1, nobody, timeout=3), _sft(cfg, 0, lonely, timeout=3)],
                 [_env(), _env()], tmp_path, timeout=120)
    host = socket.gethostname()
    assert _one_line_error(*got[0]).startswith(
        f"error: node 1 ({host}) cannot reach the rendezvous at 127.0.0.1:{nobody} (waited 3 s): start node 0")
    assert _one_line_error(*got[1]).startswith(
        f"error: node 0 ({host}): not all 2 nodes joined the rendezvous at 127.0.0.1:{lonely} within 3 s")


def test_another_config_and_another_sftkit_on_one_node_stop_both(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir)
    other = tmp_path / "other_src"  # node 1 runs a different sftkit release
    shutil.copytree(SRC / "sftkit", other / "sftkit", ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "sftkit" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{sftkit.__version__}"', '__version__ = "9.9.9"'))
    env1 = {**_env(), "PYTHONPATH": os.pathsep.join([str(other), *filter(None, [os.environ.get("PYTHONPATH")])])}
    port = _port()
    got = _nodes([_sft(cfg, 0, port, "output_dir=run", timeout=60),
                  _sft(cfg, 1, port, "output_dir=run", "train.learning_rate=0.02", timeout=60)],
                 [_env(), env1], tmp_path, timeout=300)
    lines = [_one_line_error(*g) for g in got]
    assert lines[0] == lines[1]  # both nodes say the same sentence
    host = socket.gethostname()
    assert lines[0].startswith(f"error: node 1 ({host}) does not run what node 0 ({host}) runs: ")
    assert f"sftkit 9.9.9 (node 0: {sftkit.__version__})" in lines[0]
    assert "config train.learning_rate = 0.02 (node 0: 0.01)" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing was written
