"""A small, real HTTP server speaking the part of the Hugging Face hub API that
``huggingface_hub.snapshot_download`` uses (read from huggingface_hub 2.4's source):

  GET  /api/models/{repo}/revision/{rev}          -> {"id", "sha", "siblings"}
  GET  /api/models/{repo}/tree/{commit}?recursive -> [{"type": "file", "path", "size", "oid"}]
  HEAD /{repo}/resolve/{commit}/{file}            -> X-Repo-Commit, ETag, Content-Length
  GET  /{repo}/resolve/{commit}/{file}            -> the bytes (honours Range: bytes=N-)

and the same for dataset repositories under ``/api/datasets/`` and ``/datasets/{repo}/resolve/``
(``add_folder(..., kind="dataset")``).

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) as
the hub does. Faults for the resume tests: ``drop[file] = n`` cuts the connection
short of its end in the next n GETs of that file; ``stall`` holds a file's GET
there until ``release`` is set.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    revisions: dict[str, str]  # branch/tag -> commit
    files: dict[str, dict[str, bytes]]  # commit -> {path: bytes}


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)  # "ORG/NAME" (models) or "datasets/ORG/NAME"
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    drop: dict[str, int] = field(default_factory=dict)
    stall: str | None = None
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def add_folder(self, repo_id: str, folder: Path, commit: str, revisions: tuple[str, ...] = ("main",),
                   kind: str = "model") -> None:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        key = repo_id if kind == "model" else f"datasets/{repo_id}"
        repo = self.repos.setdefault(key, Repo({}, {}))
        repo.files[commit] = files
        for r in revisions:
            repo.revisions[r] = commit

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of every GET of a file (None: a full GET)."""
        return [rng for m, p, rng in self.log if m == "GET" and p.endswith(f"/{name}") and "/resolve/" in p]


def _split_repo(rest: str) -> tuple[str, str]:
    org, name, tail = [*rest.split("/", 2), "", ""][:3]
    return f"{org}/{name}", tail


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
              head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: int, error_code: str, head: bool = False) -> None:
        body = json.dumps({"error": error_code}).encode()
        self._send(code, body, {"X-Error-Code": error_code, "Content-Type": "application/json"}, head=head)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        self.hub.log.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/"):
            self._api(path[len("/api/models/"):])
        elif path.startswith("/api/datasets/"):
            self._api(path[len("/api/datasets/"):], "datasets/")
        elif path.startswith("/datasets/") and "/resolve/" in path:
            self._resolve(path[len("/datasets/"):], head, "datasets/")
        elif "/resolve/" in path:
            self._resolve(path.lstrip("/"), head)
        else:
            self._error(404, "RepoNotFound", head)

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", head)
        return repo

    def _commit(self, repo: Repo, rev: str, head: bool = False) -> str | None:
        commit = rev if rev in repo.files else repo.revisions.get(rev)
        if commit is None:
            self._error(404, "RevisionNotFound", head)
        return commit

    def _api(self, rest: str, kind: str = "") -> None:
        repo_id, tail = _split_repo(rest)
        repo = self._repo(kind + repo_id)
        if repo is None:
            return
        kind, _, rev = tail.partition("/")
        commit = self._commit(repo, rev)
        if commit is None:
            return
        files = repo.files[commit]
        if kind == "revision":
            body = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": p} for p in files]}
        else:  # tree
            body = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in files.items()]
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, rest: str, head: bool, kind: str = "") -> None:
        repo_id, tail = _split_repo(rest)
        repo = self._repo(kind + repo_id, head)
        if repo is None:
            return
        rev, _, name = tail.removeprefix("resolve/").partition("/")
        commit = self._commit(repo, rev, head)
        if commit is None:
            return
        data = repo.files[commit].get(name)
        if data is None:
            self._error(404, "EntryNotFound", head)
            return
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if head:
            self._send(200, data, headers, head=True)
            return
        body = data[start:]
        code = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if self._fault(name, code, headers, body):
            return
        self._send(code, body, headers)

    def _fault(self, name: str, code: int, headers: dict[str, str], body: bytes) -> bool:
        """Send part of the body, then cut the connection (drop) or wait (stall). True when it did."""
        dropping = self.hub.drop.get(name, 0) > 0
        if not dropping and self.hub.stall != name:
            return False
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # huggingface_hub writes in 10 MiB chunks: cut past the first one so there is something to resume from
        cut = len(body) - (1 << 20) if len(body) > (11 << 20) else len(body) // 2
        self.wfile.write(body[:cut])
        self.wfile.flush()
        if dropping:
            self.hub.drop[name] -= 1
        else:
            self.hub.stalled.set()
            self.hub.release.wait(timeout=60)
        self.close_connection = True
        return True


class HubServer:
    """``with HubServer(hub) as url:`` serves ``hub`` on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, hub: Hub) -> None:
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
