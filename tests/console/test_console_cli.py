"""`sft console` itself: the address it prints, a token whenever it listens beyond loopback,
and a clear refusal when the port is taken."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
from console_helpers import free_port, wait_for


def _start(args: list[str], cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftkit.cli", "console", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_not_loopback_means_a_generated_token(tmp_path):
    port = free_port()
    proc = _start(["--host", "0.0.0.0", "--port", str(port), "--runs", "runs"], tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"sftkit console: http://0.0.0.0:{port}/?token="), line
        token = line.split("?token=")[1].split()[0]
        assert len(token) >= 20
        root = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(root + "/"), 30, "the console", every=0.2)
        assert httpx.get(root + "/api/runs").status_code == 401
        assert httpx.get(root + "/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = httpx.get(root + "/api/runs", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["runs"] == []
        # With a token, a non-loopback Host is served (the token is the guard).
        r = httpx.get(root + "/api/health", headers={"Authorization": f"Bearer {token}", "Host": "gpu-box:7860"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
    assert (tmp_path / "runs").is_dir()


def test_taken_port_and_short_token_are_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _start(["--port", str(port)], tmp_path)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    proc = _start(["--token", "short"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--token must be at least 8 characters" in err


def test_loopback_needs_no_token(tmp_path):
    host, port = "127.0.0.1", free_port()
    proc = _start(["--host", host, "--port", str(port)], tmp_path)
    try:
        assert proc.stdout.readline().strip().startswith(f"sftkit console: http://{host}:{port}/  (runs:")
        wait_for(lambda: _up(f"http://{host}:{port}/"), 30, "the console", every=0.2)
        assert httpx.get(f"http://{host}:{port}/api/runs").status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
