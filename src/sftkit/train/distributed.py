"""Many processes, one or many machines: what every rank agrees on before the first step.

Under torchrun (``sft train --nproc N``, ``--nnodes N``), DeepSpeed's launcher, or any launcher that
sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``, the ranks of one ``sft train`` form a
*session* over the launcher's TCP store (the one torch's rendezvous made; where a launcher has none,
rank 0 hosts it and ``init_process_group`` later reuses it). Through it they

* compare what every node runs (``agree``): sftkit and library versions, the config (all of it but
  ``output_dir`` and the data files' paths), the content of the data files, the template, tokenizer
  and model files. A difference stops every rank with one sentence naming the node and what differs;
* prepare the data once per node (``prepared``): local rank 0 prepares it (filling the prepared-data
  cache), the other local ranks read it back and check its digest, and every node's digest must
  equal node 0's;
* learn whether ``output_dir`` is one folder all nodes share (``storage``): then rank 0 writes the
  run folder and each rank its own part of a checkpoint; on per-node disks every node keeps a full
  copy instead (the Trainer's ``save_on_each_node``). DeepSpeed ZeRO needs the shared folder;
* resume from the newest checkpoint that is complete on every node (``checkpoint``);
* stop together: an error on one rank reaches all others at once, and a node whose heartbeat stalls
  for ``timeout`` seconds (``sft train --rdzv-timeout``, env ``SFTKIT_RDZV_TIMEOUT``) stops the rest,
  during the checks and, once they passed, during training. Nothing waits longer than that.

In one process every call returns at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from sftkit import __version__
from sftkit.core.errors import SftkitError, TrainError
from sftkit.train import nodes
from sftkit.train.nodes import Peer

ENV_TIMEOUT = "SFTKIT_RDZV_TIMEOUT"
DEFAULT_TIMEOUT = 600.0  # torchrun's own default for nodes joining the rendezvous
_BEAT = 1.0  # seconds between a node's heartbeats
_POLL = 0.1
_HOSTED: list[Any] = []  # a store this process hosts lives as long as the process


def timeout_from_env() -> float:
    raw = os.environ.get(ENV_TIMEOUT, "")
    try:
        return float(raw) if raw.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise TrainError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds; set it to e.g. 600") from None


def _connect(peer: Peer, timeout: float) -> tuple[Any, Callable[[], Any]]:
    """The session's store, and a function that opens another connection to it (for the heartbeat)."""
    from torch.distributed import PrefixStore, TCPStore

    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    hosted = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    if hosted:  # DeepSpeed's launcher, mpirun ...: rank 0 hosts the store; torch's env:// init then joins it
        os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"
        os.environ.setdefault("TORCHELASTIC_RESTART_COUNT", "0")
    prefix = f"sftkit/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"

    def client(master: bool = False) -> Any:
        try:
            raw = TCPStore(addr, port, is_master=master, timeout=timedelta(seconds=timeout), wait_for_workers=False)
        except (RuntimeError, TimeoutError, ValueError) as e:
            raise TrainError(f"{peer.label} (rank {peer.rank}) cannot reach the store at {addr}:{port} within "
                             f"{timeout:.0f} s ({str(e).splitlines()[0]}); check MASTER_ADDR/MASTER_PORT and that "
                             "rank 0 runs") from None
        if master:
            _HOSTED.append(raw)
        return PrefixStore(prefix, raw)

    return client(hosted and peer.rank == 0), client


class Session:
    """The ranks of one run; ``solo`` when there is one process (every method then returns at once)."""

    def __init__(self, peer: Peer | None = None, store: Any = None, timeout: float = DEFAULT_TIMEOUT,
                 reconnect: Callable[[], Any] | None = None) -> None:
        self.peer, self.store, self.timeout = peer, store, timeout
        self.peers: list[dict[str, Any]] = []  # every rank's identity, once ``agree`` ran
        self.per_node = False  # output_dir is each node's own folder
        self._seen: dict[int, tuple[int, float]] = {}  # node index -> (heartbeat count, when it last changed)
        self._since = self._checked = time.monotonic()
        self._watching = False
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        if peer is not None and peer.leader and reconnect is not None:
            self._beater = threading.Thread(target=self._beat, args=(reconnect,), daemon=True, name="sftkit-beat")
            self._beater.start()

    @property
    def solo(self) -> bool:
        return self.peer is None

    def writes_run_folder(self) -> bool:
        """Rank 0; with per-node storage, also every node's local rank 0 (its own copy)."""
        p = self.peer
        return p is None or p.rank == 0 or (self.per_node and p.leader)

    # -- stopping together ---------------------------------------------------------------------
    def publish_error(self, exc: BaseException) -> None:
        if self.solo:
            return
        text = str(exc) if isinstance(exc, SftkitError) else f"{type(exc).__name__}: {exc}"
        info = {"rank": self.peer.rank, "label": self.peer.label, "sftkit": __version__,
                "message": text.strip().splitlines()[0] if text.strip() else type(exc).__name__}
        with contextlib.suppress(Exception):  # the store may be gone already
            self.store.compare_set("error", "", json.dumps(info))  # the first error stays

    def stopped(self, waiting_for: str, store: Any = None) -> str | None:
        """Why this rank must stop: another rank failed, or a node went silent for ``timeout`` s."""
        store = store or self.store
        if store.check(["error"]):
            info = json.loads(store.get("error"))
            if info["rank"] != self.peer.rank:
                return nodes.stopped_message(info, self.peer)
        silent = self._silent_node(store) if time.monotonic() - self._checked >= _BEAT else None
        if silent is not None:
            return (f"{silent} stopped answering for {self.timeout:.0f} s while {waiting_for} (its process ended, "
                    "or the network dropped; its own output says why); every node stops")
        return None

    def _silent_node(self, store: Any) -> str | None:
        now = self._checked = time.monotonic()
        left = set(json.loads(store.get("left"))) if store.check(["left"]) else set()
        for n in range(self.peer.nodes):
            if n == self.peer.node_index or n in left:
                continue
            count = store.add(f"beat/{n}", 0)  # reads the counter (0: never beaten)
            last = self._seen.get(n)
            if last is None or last[0] != count:
                self._seen[n] = (count, now if last is not None or count else self._since)
            elif now - last[1] > self.timeout:
                return self._node_label(n)
        return None

    def _node_label(self, index: int) -> str:
        return next((p["label"] for p in self.peers if p["node_index"] == index), f"node {index} (host unknown)")

    def _beat(self, reconnect: Callable[[], Any]) -> None:
        """Each node's local rank 0: a heartbeat every second; once training runs, the watchdog too."""
        try:
            store = reconnect()
            while not self._stop.wait(_BEAT):
                store.add(f"beat/{self.peer.node_index}", 1)
                why = self.stopped("training", store) if self._watching else None
                if why:
                    _abort(why)
        except Exception as e:  # noqa: BLE001 - the store (on rank 0's node) is gone: the run cannot go on
            if not self._stop.is_set():
                _abort(f"{self.peer.label} lost the rendezvous store ({type(e).__name__}): the node hosting it "
                       "stopped; every node stops")

    def close(self) -> None:
        """Leave: stop the heartbeat and say this node left (after its error, if it failed). Rank 0,
        when it hosts the store, waits (at most ``timeout`` s) for the other nodes to leave: its exit
        takes the store down, and with it the error they have still to read."""
        if self.solo:
            return
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        with contextlib.suppress(Exception):
            if self.peer.leader:
                self._append("left", self.peer.node_index)
            deadline = time.monotonic() + self.timeout
            while _HOSTED and time.monotonic() < deadline:
                if len(json.loads(self.store.get("left"))) >= self.peer.nodes:
                    break
                time.sleep(_POLL)

    def _append(self, key: str, item: Any) -> None:
        while True:  # compare-and-set: several nodes append at once
            old = self.store.get(key).decode() if self.store.check([key]) else ""
            new = json.dumps([*(json.loads(old) if old else []), item])
            if self.store.compare_set(key, old, new).decode() == new:
                return

    # -- exchanging ----------------------------------------------------------------------------
    def _wait(self, keys: list[str], waiting_for: str) -> None:
        while True:
            try:
                if self.store.check(keys):
                    return
                why = self.stopped(waiting_for) or self._left_early()
            except (RuntimeError, OSError) as e:  # torch's store errors: the node hosting it is gone
                raise TrainError(f"{self.peer.label} lost the rendezvous store while {waiting_for} "
                                 f"({type(e).__name__}): the node hosting it stopped; every node stops") from None
            if why:
                raise TrainError(why)
            time.sleep(_POLL)

    def _left_early(self) -> str | None:
        """A node that ended while the others still check: it found nothing to do."""
        left = json.loads(self.store.get("left")) if self.store.check(["left"]) else []
        if not left:
            return None
        names = ", ".join(self._node_label(n) for n in left)
        return (f"{names} ended without training (its output_dir holds a run that already finished) while "
                f"{self.peer.label} did not: with per-node storage every node's output_dir must hold the same run")

    def exchange(self, stage: str, value: Any, waiting_for: str, ranks: list[int] | None = None) -> list[Any]:
        """Publish ``value``; return every rank's (or those of ``ranks``) in rank order."""
        self.store.set(f"{stage}/{self.peer.rank}", json.dumps(value))
        keys = [f"{stage}/{r}" for r in (range(self.peer.world) if ranks is None else ranks)]
        self._wait(keys, waiting_for)
        return [json.loads(v) for v in self.store.multi_get(keys)]

    # -- the checks ----------------------------------------------------------------------------
    def agree(self, cfg: Any, fingerprint: dict[str, Any], model_path: Path) -> None:
        """Every node runs the same software on the same config and inputs, or every rank stops."""
        if self.solo:
            return
        me = nodes.identity(self.peer, cfg, fingerprint, model_path)
        self.peers = self.exchange("who", me, "the nodes compare what they run")
        problem = nodes.compare(self.peers)
        if problem:
            raise TrainError(problem)

    def _leaders(self) -> dict[int, int]:
        """rank -> the rank of its node's local rank 0."""
        first = {p["node_index"]: p["rank"] for p in self.peers if p["local_rank"] == 0}
        return {p["rank"]: first[p["node_index"]] for p in self.peers}

    def prepared(self, build: Callable[[], Any]) -> Any:
        """``build()`` (``sftkit.data.prepare``) by each node's local rank 0 first, then by the other
        local ranks (a prepared-data cache hit); each result checked against its node's and node 0's."""
        if self.solo:
            return build()
        leader = self._leaders()[self.peer.rank]
        if leader != self.peer.rank:
            self._wait([f"data/{leader}"], f"local rank 0 of {self.peer.label} prepares the data")
        data = build()
        digests = self.exchange("data", nodes.data_digest(data), "the other nodes prepare the data")
        problem = nodes.compare_data(self.peers, digests, self._leaders())
        if problem:
            raise TrainError(problem)
        return data

    def storage(self, run_dir: Path, deepspeed: str | None) -> bool:
        """After rank 0 claimed ``run_dir``: does every node see that folder? True when this process
        must claim its own node's copy (per-node storage; local rank 0 of a node other than rank 0's)."""
        if self.solo:
            return False
        probe = run_dir / ".sftkit-storage-probe"
        if self.peer.rank == 0:
            probe.write_text(token := f"{socket.gethostname()} {os.getpid()} {time.time_ns()}")
            self.store.set("probe", token)
        self._wait(["probe"], "rank 0 claims the run folder")
        token = self.store.get("probe").decode()
        seen = self.peer.leader and probe.is_file() and probe.read_text() == token
        leaders = sorted(set(self._leaders().values()))
        views = self.exchange("storage", bool(seen), "the nodes look for the run folder")
        if self.peer.rank == 0:
            probe.unlink(missing_ok=True)
        problem = nodes.storage_problem(self.peers, {r: views[r] for r in leaders}, deepspeed, run_dir)
        if problem:
            raise TrainError(problem)
        self.per_node = not all(views[r] for r in leaders)
        return self.per_node and self.peer.leader and self.peer.rank != 0

    def checkpoint(self, chosen: str | None, folder: Any, resume: str | None, console: Any) -> str | None:
        """The checkpoint every node resumes from: the newest one complete on all of them. The checks
        end here: from now on each node's heartbeat thread also watches the others."""
        if self.solo:
            return chosen
        if resume and resume != "auto":
            found = self.exchange("resume", Path(resume).is_dir(), "the nodes look for the --resume folder")
            missing = list(dict.fromkeys(self.peers[r]["label"] for r, ok in enumerate(found) if not ok))
            if missing:
                raise TrainError(f"--resume {resume}: no such folder on {', '.join(missing)}; give a checkpoint "
                                 "folder every node can read (the same path on each)")
        elif resume:
            steps = self.exchange("steps", folder.complete_steps(), "the nodes list their checkpoints")
            step = max(set.intersection(*map(set, steps)), default=None)
            agreed = None if step is None else str(folder.checkpoints / f"checkpoint-{step}")
            if agreed != chosen:
                console.print(f"[yellow]resuming from {agreed or 'step 0'} instead: the newest checkpoint complete "
                              "on every node[/]", soft_wrap=True)
            chosen = agreed
        self._watching = True
        return chosen


def _abort(message: str) -> None:
    """From the heartbeat thread: the run cannot go on, and the main thread may sit in a collective
    for a long time. One line, then exit: the launcher stops this node's other ranks."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


_ACTIVE: list[Session] = []  # the session this process is in (at most one)


def current() -> Session:
    """The session of this process (a solo one outside ``session()``)."""
    return _ACTIVE[0] if _ACTIVE else Session()


@contextlib.contextmanager
def session() -> Iterator[Session]:
    """Join the other ranks (under a launcher) for the block; an exception leaving it is published to
    them. Nested use joins once."""
    if _ACTIVE:
        yield _ACTIVE[0]
        return
    peer = nodes.peer_from_env()
    if peer is None:
        yield Session()
        return
    timeout = timeout_from_env()
    store, reconnect = _connect(peer, timeout)
    s = Session(peer, store, timeout, reconnect)
    _ACTIVE.append(s)
    try:
        yield s
    except BaseException as e:
        s.publish_error(e)
        raise
    finally:
        _ACTIVE.clear()
        s.close()


def in_session(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` inside ``session()``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with session():
            return fn(*args, **kwargs)

    return wrapper
