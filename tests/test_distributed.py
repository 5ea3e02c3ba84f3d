"""The ranks of a multi-node run agree before training (``sftkit.train.distributed``), on a real
TCP store: one thread per rank stands in for a process on a node (the store, the waiting, the
heartbeats and the data preparation are the real ones). Launching real nodes is in
``tests/integration/test_multinode.py``."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sftkit.core.configio import load_config
from sftkit.core.errors import TrainError, UsageError
from sftkit.core.rundir import RunDir
from sftkit.data.prepare import prepare
from sftkit.templates import Renderer, load_template
from sftkit.train import distributed, nodes
from sftkit.train.callbacks import COMPLETE
from sftkit.train.launch import Launch
from sftkit.train.nodes import Peer


@pytest.fixture
def server():
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    yield store


def _client(server: Any) -> Any:
    from torch.distributed import PrefixStore, TCPStore

    raw = TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=10), wait_for_workers=False)
    return PrefixStore("sftkit/0/", raw)


def _peers(layout: list[int]) -> list[Peer]:
    """``layout[i]``: the node of rank i (ranks of a node are contiguous)."""
    out, local = [], {}
    for rank, node in enumerate(layout):
        local[node] = local.get(node, -1) + 1
        out.append(Peer(rank, len(layout), local[node], node, len(set(layout)), node, f"host{node}"))
    return out


def _sessions(server: Any, layout: list[int], timeout: float = 10.0, beat: bool = False) -> list[distributed.Session]:
    return [distributed.Session(p, _client(server), timeout, (lambda: _client(server)) if beat else None)
            for p in _peers(layout)]


def _each(sessions: list[distributed.Session], fn: Callable[[int, distributed.Session], Any],
          timeout: float = 60) -> list[Any]:
    """``fn(rank, session)`` in one thread per rank; each result, or the exception it raised."""
    out: list[Any] = [None] * len(sessions)

    def go(i: int) -> None:
        try:
            out[i] = fn(i, sessions[i])
        except Exception as e:  # noqa: BLE001 - the test looks at it
            out[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a rank hung"
    for s in sessions:
        s.close()
    return out


def _config(tmp_path: Path, name: str, lr: float = 1e-2, rows: str = "a") -> Any:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "t.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "你好"},
                                                             {"role": "assistant", "content": rows}]}) + "\n")
    (folder / "c.yaml").write_text(f"model:\n  name_or_path: tiny\ndata:\n  train: t.jsonl\n"
                                   f"train:\n  learning_rate: {lr}\n")
    return load_config(folder / "c.yaml", [f"output_dir={folder / 'run'}"])


def _identity_inputs(cfg: Any, tmp_path: Path) -> tuple[dict, Path]:
    from sftkit.core.digest import file_hash

    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    fp = {"data": {str(s.path): file_hash(Path(s.path)) for s in cfg.data.train}, "template": "t", "tokenizer": "k"}
    return fp, model


# -- what the nodes run ----------------------------------------------------------------------------

def test_identical_nodes_agree_even_with_their_own_paths(server, tmp_path):
    """Two nodes with the config and data in different folders (and different output_dirs)."""
    cfgs = [_config(tmp_path, "n0"), _config(tmp_path, "n1")]

    inputs = [_identity_inputs(cfg, tmp_path) for cfg in cfgs]

    def agree(i, s):
        s.agree(cfgs[i], *inputs[i])
        return [p["label"] for p in s.peers]

    assert _each(_sessions(server, [0, 1]), agree) == [["node 0 (host0)", "node 1 (host1)"]] * 2


def test_a_different_config_and_data_stop_every_rank_naming_the_node(server, tmp_path):
    cfgs = [_config(tmp_path, "n0"), _config(tmp_path, "n1", lr=2e-2, rows="b")]

    inputs = [_identity_inputs(cfg, tmp_path) for cfg in cfgs]

    def agree(i, s):
        s.agree(cfgs[s.peer.node], *inputs[s.peer.node])

    errors = _each(_sessions(server, [0, 0, 1]), agree)
    assert all(isinstance(e, TrainError) for e in errors)
    msg = str(errors[0])
    assert {str(e) for e in errors} == {msg}  # every rank says the same sentence
    assert msg.startswith("node 1 (host1) does not run what node 0 (host0) runs: ")
    assert "config train.learning_rate = 0.02 (node 0: 0.01)" in msg
    assert "data file 1 (t.jsonl) has other content" in msg and "\n" not in msg


def test_another_sftkit_version_and_a_missing_library_are_named():
    ref = {"node": 0, "label": "node 0 (a)", "local_rank": 0, "node_index": 0, "host": "a", "rank": 0,
           "versions": {"sftkit": "0.1.0", "torch": "2.13.0", "deepspeed": "0.19.8"}, "config": {},
           "data": [], "template": "t", "tokenizer": "k", "model": "m"}
    other = {**ref, "node": 1, "label": "node 1 (b)", "node_index": 1, "host": "b", "rank": 1,
             "versions": {"sftkit": "0.2.0", "torch": "2.13.0", "deepspeed": None}, "model": "m2"}
    msg = nodes.compare([other, ref])  # node 0 is the reference wherever its ranks are
    assert msg.startswith("node 1 (b) does not run what node 0 (a) runs: ")
    assert "sftkit 0.2.0 (node 0: 0.1.0)" in msg and "deepspeed not installed (node 0: 0.19.8)" in msg
    assert "the model folder differs" in msg and "torch" not in msg


def test_two_nodes_started_with_the_same_node_rank():
    a = {"node": 0, "node_index": 0, "host": "a", "label": "node 0 (a)", "local_rank": 0, "rank": 0}
    b = {**a, "node_index": 1, "host": "b", "rank": 1}
    assert nodes.compare([a, b]) == ("two nodes were started as node 0 (on a and b); give each node its own "
                                     "--node-rank, 0 to 1")


# -- stopping together -----------------------------------------------------------------------------

def test_an_error_on_one_rank_stops_the_others_at_once(server, tmp_path):
    def fn(i, s):
        if i == 1:
            s.publish_error(TrainError("output_dir /x is not writable"))
            return None
        return s.exchange("who", {}, "the nodes compare what they run")

    got = _each(_sessions(server, [0, 1], timeout=60), fn, timeout=30)
    assert isinstance(got[0], TrainError)
    assert str(got[0]) == "node 1 (host1) stopped: output_dir /x is not writable"


def test_a_silent_node_stops_the_others_after_the_timeout(server):
    """Node 1 never arrives: node 0 gives up after the timeout (1 s here) instead of waiting forever."""
    s = distributed.Session(_peers([0, 1])[0], _client(server), 1.0, lambda: _client(server))
    got = _each([s], lambda i, s: s.exchange("who", {}, "the nodes compare what they run"), timeout=30)
    assert isinstance(got[0], TrainError)
    assert str(got[0]).startswith("node 1 (host unknown) stopped answering for 1 s while the nodes compare")


def test_a_node_that_beats_is_waited_for(server):
    """A slow node (preparing data for longer than the timeout) is alive: nobody gives up on it."""
    sessions = _sessions(server, [0, 1], timeout=1.0, beat=True)
    slow = threading.Event()

    def fn(i, s):
        if i == 1:
            slow.wait(2.5)  # longer than the timeout, while its heartbeat goes on
        return s.exchange("data", i, "the other nodes prepare the data")

    assert _each(sessions, fn) == [[0, 1], [0, 1]]


_WATCHED = """
import time
from datetime import timedelta
from torch.distributed import PrefixStore, TCPStore
from sftkit.train import distributed
from sftkit.train.nodes import Peer

server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
def client():
    raw = TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=5), wait_for_workers=False)
    return PrefixStore("sftkit/0/", raw)
s = distributed.Session(Peer(0, 2, 0, 0, 2, 0, "host0"), client(), 1.0, client)
s.peers = [{"node_index": 1, "label": "node 1 (host1)"}]
s.checkpoint(None, None, None, None)  # the checks are over: training starts, the heartbeat watches
time.sleep(60)  # the main thread "in a collective" that never returns
print("still training")
"""


def test_during_training_a_silent_node_stops_this_one_within_the_timeout():
    """The watchdog ends the process (its main thread may sit in a collective for 30 minutes)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _WATCHED], capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "still training" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: node 1 (host1) stopped answering for 1 s while training (its process ended, or the network "
        "dropped; its own output says why); every node stops")


# -- the data --------------------------------------------------------------------------------------

def test_data_is_prepared_once_per_node_then_read_from_the_cache(server, tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("SFTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SFTKIT_PREPARED_CACHE", raising=False)
    cfg = _config(tmp_path, "n0")
    renderer = Renderer(load_template("auto", tokenizer), tokenizer, cfg.data.mask, cfg.data.cutoff_len,
                        cfg.data.overflow)
    sessions = _sessions(server, [0, 0, 0])
    for s in sessions:
        s.peers = [{"rank": p.rank, "node_index": p.node_index, "local_rank": p.local_rank, "label": p.label,
                    "node": p.node} for p in _peers([0, 0, 0])]
    got = _each(sessions, lambda i, s: s.prepared(lambda: prepare(cfg.data, renderer, 1)).report["cache"]["status"])
    assert got == ["stored", "hit", "hit"]  # local rank 0 first; the others read its entry and check its digest
    assert len(list((tmp_path / "home" / "prepared").glob("*.pkl"))) == 1


def test_prepared_data_that_differ_between_nodes_stop_every_rank(server, tmp_path, tokenizer):
    cfg = _config(tmp_path, "n0")
    renderer = Renderer(load_template("auto", tokenizer), tokenizer, cfg.data.mask, cfg.data.cutoff_len,
                        cfg.data.overflow)
    sessions = _sessions(server, [0, 1])
    for s in sessions:
        s.peers = [{"rank": p.rank, "node_index": p.node_index, "local_rank": p.local_rank, "label": p.label,
                    "node": p.node} for p in _peers([0, 1])]

    def build(i):
        data = prepare(cfg.data, renderer, 1)
        if i == 1:  # what another sftkit's renderer would produce
            data.train.examples[0].input_ids[0] += 1
        return data

    errors = _each(sessions, lambda i, s: s.prepared(lambda: build(i)))
    assert all(isinstance(e, TrainError) for e in errors)
    assert str(errors[0]).startswith("node 1 (host1) prepared other training data than node 0 (host0)")


# -- storage and resuming --------------------------------------------------------------------------

def _claimed(sessions: list[distributed.Session], dirs: list[Path]) -> None:
    for s in sessions:
        s.peers = [{"rank": p.rank, "node_index": p.node_index, "local_rank": p.local_rank, "label": p.label,
                    "node": p.node} for p in (x.peer for x in sessions)]
    dirs[0].mkdir(parents=True, exist_ok=True)  # rank 0 claimed its folder


def test_shared_output_dir(server, tmp_path):
    sessions = _sessions(server, [0, 1])
    run = tmp_path / "shared" / "run"
    _claimed(sessions, [run])
    assert _each(sessions, lambda i, s: (s.storage(run, None), s.per_node, s.writes_run_folder())) == \
        [(False, False, True), (False, False, False)]
    assert not any(run.iterdir())  # the probe is gone


def test_per_node_output_dirs_each_keep_a_copy(server, tmp_path):
    sessions = _sessions(server, [0, 0, 1])
    dirs = [tmp_path / "a" / "run", tmp_path / "a" / "run", tmp_path / "b" / "run"]
    _claimed(sessions, dirs)
    got = _each(sessions, lambda i, s: (s.storage(dirs[i], None), s.writes_run_folder()))
    assert got == [(False, True), (False, False), (True, True)]  # node 1's local rank 0 claims its own copy


def test_per_node_output_dirs_with_deepspeed_are_refused(server, tmp_path):
    sessions = _sessions(server, [0, 1])
    dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    _claimed(sessions, dirs)
    errors = _each(sessions, lambda i, s: s.storage(dirs[i], "zero2"))
    assert all(isinstance(e, TrainError) for e in errors)
    assert str(errors[0]).startswith("node 1 (host1) cannot see the run folder node 0 (host0) wrote")
    assert "storage every node mounts" in str(errors[0])


def test_some_nodes_sharing_and_some_not_is_refused(server, tmp_path):
    sessions = _sessions(server, [0, 1, 2])
    dirs = [tmp_path / "a" / "run", tmp_path / "a" / "run", tmp_path / "c" / "run"]
    _claimed(sessions, dirs)
    errors = _each(sessions, lambda i, s: s.storage(dirs[i], None))
    assert all(isinstance(e, TrainError) for e in errors)
    assert "node 2 (host2) cannot see the run folder" in str(errors[0]) and "while node 1 (host1) can" in str(errors[0])


def _checkpoints(folder: Path, steps: list[int], complete: list[int]) -> RunDir:
    for s in steps:
        d = folder / "checkpoints" / f"checkpoint-{s}"
        d.mkdir(parents=True)
        if s in complete:
            (d / COMPLETE).write_text("{}")
    return RunDir(folder)


def test_resume_from_the_newest_checkpoint_complete_on_every_node(server, tmp_path):
    from rich.console import Console

    folders = [_checkpoints(tmp_path / "a", [2, 4, 6], [2, 4, 6]), _checkpoints(tmp_path / "b", [2, 4, 6], [2, 4])]
    sessions = _sessions(server, [0, 1])
    chosen = [str(f.checkpoints / "checkpoint-6") for f in folders[:1]] + [str(folders[1].checkpoints / "checkpoint-4")]
    console = Console(record=True, width=200)
    got = _each(sessions, lambda i, s: s.checkpoint(chosen[i], folders[i], "auto", console))
    assert got == [str(f.checkpoints / "checkpoint-4") for f in folders]
    assert "the newest checkpoint complete on every node" in console.export_text()


# -- the launcher's side ---------------------------------------------------------------------------

def test_peer_from_torchrun_and_deepspeed_variables():
    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2", "SFTKIT_NODE_RANK": "0"}
    p = nodes.peer_from_env(torchrun)
    assert (p.rank, p.local_rank, p.node_index, p.nodes, p.node, p.leader) == (3, 1, 1, 2, 0, False)
    ds = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "CROSS_RANK": "1", "CROSS_SIZE": "2", "LOCAL_SIZE": "2"}
    p = nodes.peer_from_env(ds)
    assert (p.node_index, p.nodes, p.node, p.leader) == (1, 2, 1, True)
    bare = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    assert nodes.peer_from_env(bare).node_index == 1
    assert nodes.peer_from_env({"WORLD_SIZE": "1"}) is None and nodes.peer_from_env({}) is None


@pytest.mark.parametrize(("spec", "says"), [
    (Launch(nnodes=2, node_rank=2, master_addr="h"), "--node-rank 2: give each of the 2 node(s) its own number"),
    (Launch(nnodes=2), "--nnodes > 1 needs --master-addr"),
    (Launch(nproc=0), "both must be 1 or more"),
    (Launch(nnodes=2, master_addr="h", master_port=70000), "not a TCP port"),
    (Launch(timeout=0), "positive number of seconds"),
])
def test_launch_values_that_cannot_work(spec, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        spec.check()


def test_torchrun_arguments():
    two = Launch(nproc=8, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400, timeout=90)
    assert two.torchrun_args(["-m", "sftkit.cli"]) == [
        "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-id", "sftkit", "--rdzv-endpoint", "10.0.0.1:29400",
        "--rdzv-conf", "join_timeout=90,read_timeout=90,is_host=false", "--nproc-per-node", "8",
        "--max-restarts", "0", "-m", "sftkit.cli"]
    assert Launch(nproc=2).torchrun_args([])[:1] == ["--standalone"]
