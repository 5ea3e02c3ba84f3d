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


def test_loopback_console_has_a_token_and_its_printed_url_works(tmp_path):
    """Any local user can reach 127.0.0.1 (a shared GPU box), so loopback gets a token too; the
    printed URL still opens a working page: it sets the cookie, and the page's API calls pass."""
    host, port = "127.0.0.1", free_port()
    proc = _start(["--host", host, "--port", str(port)], tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"sftkit console: http://{host}:{port}/?token="), line
        url = line.split()[2]
        wait_for(lambda: _up(f"http://{host}:{port}/"), 30, "the console", every=0.2)
        assert httpx.get(f"http://{host}:{port}/api/runs").status_code == 401
        with httpx.Client() as browser:  # keeps cookies, follows the redirect like a browser
            page = browser.get(url, follow_redirects=True)
            assert page.status_code == 200 and str(page.url) == f"http://{host}:{port}/" and "<script" in page.text
            origin = {"Origin": f"http://{host}:{port}"}  # what a browser sends on the page's POSTs
            assert browser.get(f"http://{host}:{port}/api/runs").json()["runs"] == []
            r = browser.post(f"http://{host}:{port}/api/data/check", json={"files": [{"path": "nope.jsonl"}]},
                             headers=origin)
            assert r.status_code == 400 and "nope.jsonl" in r.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(15)


def test_allow_must_name_a_folder(tmp_path):
    proc = _start(["--port", str(free_port()), "--allow", "no-such-folder"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--allow no-such-folder: not a folder" in err
