"""``sft train --nproc N [--nnodes N --node-rank R --master-addr HOST --master-port P]``: torch's
elastic agent (torchrun) in this process.

One node (``--nproc`` alone) is torchrun's ``--standalone``. Many nodes meet at torch's c10d
rendezvous on node 0 (``HOST:P``, which node 0 hosts): the agents there agree on the ranks (ordered
by host name, so the global rank 0 need not be on ``--node-rank 0``) and start ``--nproc`` workers
each, every one running ``sft train`` again with the same arguments. A node that cannot reach the
rendezvous, or a rendezvous that some node never joins, stops after ``--rdzv-timeout`` seconds with
one sentence; the workers use the same timeout for their own checks (``sftkit.train.distributed``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
from dataclasses import dataclass

from sftkit.core.errors import TrainError, UsageError
from sftkit.train.distributed import ENV_TIMEOUT
from sftkit.train.nodes import ENV_NODE


@dataclass(frozen=True)
class Launch:
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500
    timeout: float = 600.0

    def check(self) -> None:
        """Refuse values torchrun would fail on later, or hang on."""
        if self.nproc < 1 or self.nnodes < 1:
            raise UsageError(f"--nproc {self.nproc} --nnodes {self.nnodes}: both must be 1 or more")
        if not 0 <= self.node_rank < self.nnodes:
            raise UsageError(f"--node-rank {self.node_rank}: give each of the {self.nnodes} node(s) its own number "
                             f"from 0 to {self.nnodes - 1}")
        if self.nnodes > 1 and not self.master_addr:
            raise UsageError("--nnodes > 1 needs --master-addr: the address of node 0 (the machine started with "
                             "--node-rank 0), reachable from every node")
        if not 0 < self.master_port < 65536:
            raise UsageError(f"--master-port {self.master_port}: not a TCP port (1-65535)")
        if self.timeout <= 0:
            raise UsageError(f"--rdzv-timeout {self.timeout:g}: give a positive number of seconds")

    @property
    def needed(self) -> bool:
        """More than one process, and this one is not already a worker of a launcher."""
        return (self.nproc > 1 or self.nnodes > 1) and "LOCAL_RANK" not in os.environ

    def torchrun_args(self, command: list[str]) -> list[str]:
        t = str(max(1, math.ceil(self.timeout)))  # torchrun reads whole seconds
        if self.nnodes == 1:  # a local rendezvous on a free port: no clash with another run on 29500
            head = ["--standalone"]
        else:
            is_host = "true" if self.node_rank == 0 else "false"  # node 0 hosts it; the others only connect
            head = ["--nnodes", str(self.nnodes), "--rdzv-backend", "c10d", "--rdzv-id", "sftkit",
                    "--rdzv-endpoint", f"{self.master_addr}:{self.master_port}",
                    "--rdzv-conf", f"join_timeout={t},read_timeout={t},is_host={is_host}"]
        return [*head, "--nproc-per-node", str(self.nproc), "--max-restarts", "0", *command]

    def where(self) -> str:
        return f"node {self.node_rank} ({socket.gethostname()})"


def launch(spec: Launch, command: list[str]) -> int:
    """Run the agent for ``command`` (``-m sftkit.cli train ...``) until every worker ended; the exit
    code of the first failed worker (its own error is already printed), else 0."""
    quiet = os.environ.get("TORCH_CPP_LOG_LEVEL")
    # torch's C++ side logs every failed connection attempt with a stack trace; the sentence below says
    # it all (read once, when torch loads; the workers get the setting back)
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousConnectionError,
        RendezvousError,
        RendezvousTimeoutError,
    )
    from torch.distributed.run import parse_args, run

    if quiet is None:
        os.environ.pop("TORCH_CPP_LOG_LEVEL")
    else:
        os.environ["TORCH_CPP_LOG_LEVEL"] = quiet
    os.environ[ENV_TIMEOUT] = f"{spec.timeout:g}"
    os.environ[ENV_NODE] = str(spec.node_rank)
    # torch logs every failed rendezvous attempt with its traceback; the sentence below says it all
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    endpoint = f"{spec.master_addr}:{spec.master_port}"
    try:
        run(parse_args(spec.torchrun_args(command)))
    except ChildFailedError as e:
        return _failed(e, spec)
    except SignalException as e:  # Ctrl-C / SIGTERM: torchrun passed it on to the workers and stopped them
        return 128 + int(e.sigval)
    except RendezvousConnectionError:
        raise TrainError(f"{spec.where()} cannot reach the rendezvous at {endpoint} (waited {spec.timeout:g} s): "
                         "start node 0 (--node-rank 0) first, and check that --master-addr is node 0's address "
                         "as seen from here, that --master-port is the same on every node and open in node 0's "
                         "firewall") from None
    except RendezvousTimeoutError:
        raise TrainError(f"{spec.where()}: not all {spec.nnodes} nodes joined the rendezvous at {endpoint} within "
                         f"{spec.timeout:g} s; start `sft train` with the same --nnodes, --master-addr and "
                         "--master-port on every node (each with its own --node-rank), or raise --rdzv-timeout") \
            from None
    except RendezvousError as e:
        raise TrainError(f"{spec.where()}: the rendezvous at {endpoint} failed ({e}); start all nodes again") \
            from None
    return 0


def _failed(e: object, spec: Launch) -> int:
    """The workers printed their own errors; a worker killed by a signal could not, so say it here."""
    failures = getattr(e, "failures", {}) or {}
    first = min(failures.values(), key=lambda f: f.timestamp, default=None)
    if first is None:
        return 1
    code = first.exitcode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        print(f"error: rank {first.rank} on {spec.where()} was killed by {name}"
              f"{' (out of memory?)' if name == 'SIGKILL' else ''}", file=sys.stderr, flush=True)
        return 128 - code
    return code
