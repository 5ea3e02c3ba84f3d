"""Who a rank is, what it runs, and how two nodes differ (plain data; ``distributed`` moves it).

Every message here is one sentence that names the node (its number and host) and the difference,
and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from array import array
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from sftkit import __version__
from sftkit.core.digest import flatten_keys

ENV_NODE = "SFTKIT_NODE_RANK"  # the node number the user gave (``sft train --node-rank``), for messages
_LIBRARIES = ("torch", "transformers", "peft", "accelerate")
_SAME = ("give every node the same sftkit and libraries, config, data and model (install from one wheel or "
         "image, copy the files from node 0) and start them all again")


@dataclass(frozen=True)
class Peer:
    """This process among all ranks: ``node_index`` is the launcher's (unique, 0 .. nodes-1),
    ``node`` the number shown to people (``--node-rank`` where given)."""

    rank: int
    world: int
    local_rank: int
    node_index: int
    nodes: int
    node: int
    host: str

    @property
    def leader(self) -> bool:
        return self.local_rank == 0

    @property
    def label(self) -> str:
        return f"node {self.node} ({self.host})"


def _int(env: dict[str, str] | Any, *names: str) -> int | None:
    for n in names:
        if env.get(n, "").strip():
            return int(env[n])
    return None


def peer_from_env(env: dict[str, str] | Any = os.environ) -> Peer | None:
    """From the variables torchrun (GROUP_RANK ...), DeepSpeed's launcher (CROSS_RANK ...) or another
    launcher set; ``None`` for a single process."""
    world = _int(env, "WORLD_SIZE") or 1
    if world <= 1:
        return None
    rank, local = _int(env, "RANK") or 0, _int(env, "LOCAL_RANK") or 0
    index, count = _int(env, "GROUP_RANK", "CROSS_RANK"), _int(env, "GROUP_WORLD_SIZE", "CROSS_SIZE")
    if index is None or count is None:  # no node numbers: infer them from the ranks per node
        per_node = _int(env, "LOCAL_WORLD_SIZE", "LOCAL_SIZE") or world
        index, count = rank // per_node, -(-world // per_node)
    node = _int(env, ENV_NODE)
    return Peer(rank, world, local, index, count, index if node is None else node, socket.gethostname())


# -- what a rank runs ------------------------------------------------------------------------------


def _config_values(cfg: Any) -> dict[str, Any]:
    """The config as dotted keys, without what may differ per node: where the run is written and
    where the data files are (their content is compared instead)."""
    raw = cfg.model_dump(mode="json")
    raw.pop("output_dir", None)
    for split in ("train", "val"):
        raw["data"][split] = [{k: v for k, v in src.items() if k != "path"} for src in raw["data"][split]]
    return flatten_keys(raw)


def _versions(cfg: Any) -> dict[str, str | None]:
    libs = [*_LIBRARIES, *(["deepspeed"] if cfg.train.deepspeed else [])]
    out: dict[str, str | None] = {"sftkit": __version__}
    for lib in libs:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def _model_digest(path: Path) -> str:
    """File names and sizes of the model folder, and its config.json: cheap, and a different
    revision or a half-copied folder shows."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.name} {f.stat().st_size}\n".encode())
    if (path / "config.json").is_file():
        h.update((path / "config.json").read_bytes())
    return h.hexdigest()[:16]


def identity(peer: Peer, cfg: Any, fingerprint: dict[str, Any], model_path: Path) -> dict[str, Any]:
    sources = [*cfg.data.train, *cfg.data.val]
    return {"rank": peer.rank, "local_rank": peer.local_rank, "node_index": peer.node_index, "node": peer.node,
            "host": peer.host, "label": peer.label, "versions": _versions(cfg), "config": _config_values(cfg),
            "data": [[Path(s.path).name, fingerprint["data"][str(s.path)]] for s in sources],
            "template": fingerprint["template"], "tokenizer": fingerprint["tokenizer"],
            "model": _model_digest(model_path)}


# -- how nodes differ ------------------------------------------------------------------------------


def _differences(ref: dict[str, Any], other: dict[str, Any]) -> list[str]:
    base = f"node {ref['node']}"
    out = []
    for lib in sorted(set(ref["versions"]) | set(other["versions"])):
        a, b = other["versions"].get(lib), ref["versions"].get(lib)
        if a != b:
            out.append(f"{lib} {a or 'not installed'} ({base}: {b or 'not installed'})")
    for key in sorted(set(ref["config"]) | set(other["config"])):
        a, b = other["config"].get(key), ref["config"].get(key)
        if a != b:
            out.append(f"config {key} = {a!r} ({base}: {b!r})")
    if len(ref["data"]) != len(other["data"]):
        out.append(f"{len(other['data'])} data files ({base}: {len(ref['data'])})")
    for i, (a, b) in enumerate(zip(other["data"], ref["data"], strict=False)):
        if a[1] != b[1]:
            out.append(f"data file {i + 1} ({a[0]}) has other content (sha256 {a[1][:12]}; {base}: {b[1][:12]})")
    for key, what in (("template", "the template renders differently"), ("tokenizer", "the tokenizer differs"),
                      ("model", "the model folder differs (file names, sizes or config.json)")):
        if ref[key] != other[key]:
            out.append(what)
    return out


def compare(peers: list[dict[str, Any]]) -> str | None:
    """One sentence about every node that does not run what node 0 runs (None: all the same)."""
    numbers: dict[int, set[str]] = {}
    for p in peers:
        numbers.setdefault(p["node"], set()).add(f"{p['host']}#{p['node_index']}")
    twice = {n: hosts for n, hosts in numbers.items() if len(hosts) > 1}
    if twice:
        n, hosts = next(iter(sorted(twice.items())))
        names = " and ".join(sorted(h.rpartition("#")[0] for h in hosts))
        return (f"two nodes were started as node {n} (on {names}); give each node its own --node-rank, "
                f"0 to {len({p['node_index'] for p in peers}) - 1}")
    ref, found = reference(peers), {}
    for p in peers:
        diffs = _differences(ref, p)
        if diffs and p["label"] not in found:
            found[p["label"]] = diffs
    if not found:
        return None
    same = _SAME.replace("node 0", f"node {ref['node']}")
    if len(found) == 1:
        label, diffs = next(iter(found.items()))
        return f"{label} does not run what {ref['label']} runs: {', '.join(diffs)}; {same}"
    listed = "; ".join(f"{label}: {', '.join(d)}" for label, d in found.items())
    return f"{len(found)} nodes do not run what {ref['label']} runs ({listed}); {same}"


def reference(peers: list[dict[str, Any]]) -> dict[str, Any]:
    """The node the others are compared with: the lowest node number (``--node-rank 0``), which need
    not hold global rank 0 (torch's c10d rendezvous orders ranks by host name)."""
    return min(peers, key=lambda p: (p["node"], p["local_rank"]))


def data_digest(prepared: Any) -> str:
    """A digest of the token ids and labels every split holds: what training consumes."""
    h = hashlib.sha256()
    for split in (prepared.train, prepared.val):
        h.update(len(split.examples).to_bytes(8, "little"))
        for ex in split.examples:
            if not hasattr(ex, "input_ids"):  # a preference pair or feedback row: its token columns
                h.update(json.dumps(ex.to_row(), sort_keys=True).encode())
                continue
            ids, labels = array("q", ex.input_ids), array("q", ex.labels)
            h.update(len(ids).to_bytes(8, "little"))
            h.update(ids.tobytes())
            h.update(labels.tobytes())
    return h.hexdigest()[:16]


def compare_data(peers: list[dict[str, Any]], digests: list[str], leaders: dict[int, int]) -> str | None:
    """Each rank's prepared data against its node's local rank 0, and every node's against node 0's."""
    for r, d in enumerate(digests):
        lead = leaders[r]
        if d != digests[lead]:
            return (f"rank {r} on {peers[r]['label']} read prepared data that differ from its local rank 0's "
                    f"(digest {d} vs {digests[lead]}): the prepared-data cache changed under it; remove "
                    "<sftkit home>/prepared on that node (or set SFTKIT_PREPARED_CACHE=0) and start again")
    ref = reference(peers)["rank"]
    for r, d in enumerate(digests):
        if d != digests[ref]:
            return (f"{peers[r]['label']} prepared other training data than {peers[ref]['label']} (digest {d} vs "
                    f"{digests[ref]}) from the same config, data and tokenizer: its sftkit code differs; {_SAME}")
    return None


def storage_problem(peers: list[dict[str, Any]], seen: dict[int, bool], deepspeed: str | None,
                    output_dir: Path) -> str | None:
    """Whether the nodes' view of output_dir can work: all see rank 0's folder, or none does."""
    if not seen.get(0, False):
        return (f"{peers[0]['label']} cannot read back the file it just wrote into {output_dir}; "
                "choose an output_dir on a normal local or network file system")
    blind = [peers[r]["label"] for r, ok in seen.items() if not ok]
    sharing = [peers[r]["label"] for r, ok in seen.items() if ok and r != 0]
    if blind and sharing:
        return (f"{', '.join(blind)} cannot see the run folder {peers[0]['label']} wrote ({output_dir}) while "
                f"{', '.join(sharing)} can: either every node mounts output_dir from shared storage, or every "
                "node has its own disk (then each keeps a full copy); mixing both cannot work")
    if blind and deepspeed:
        return (f"{', '.join(blind)} cannot see the run folder {peers[0]['label']} wrote ({output_dir}): with "
                f"train.deepspeed={deepspeed} every rank writes its optimizer shard into one checkpoint folder and "
                "resuming reads them all, so put output_dir on storage every node mounts (NFS, Lustre, ...), "
                "or train without train.deepspeed (plain DDP keeps a full checkpoint on each node)")
    return None


def stopped_message(info: dict[str, Any], me: Peer) -> str:
    """What the other ranks say when one rank failed."""
    version = "" if info.get("sftkit") == __version__ else \
        f" (it runs sftkit {info.get('sftkit')}, {me.label} runs {__version__})"
    where = info["label"] if info["label"] != me.label else f"rank {info['rank']} on {info['label']}"
    return f"{where} stopped{version}: {info['message']}"
