"""The web console's guards against other web pages and against reading the rest of the disk.

A real uvicorn server on 127.0.0.1 and a real HTTP client. A page on another site reaches the
console in two ways: DNS rebinding (its own name, here ``127.attacker.example``, resolving to
127.0.0.1: the browser then sends that name as Host) and cross-origin requests (the browser
sends the page's Origin). Both are refused before any route runs, and nothing is created or
started. The API reads only the console's own folders, and the data check does not list the
key names of a file that holds no data."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from console.console_helpers import TOKEN, LiveConsole, free_port, rows, write_jsonl  # noqa: E402

SECRET_KEYS = ("aws_secret_access_key", "db_password")


def _yaml(name: str, model: Path) -> str:
    # The shape of the reported attack: a run whose model folder's code is trusted.
    return (f"name: {name}\nmodel:\n  name_or_path: {model}\n  trust_remote_code: true\n"
            "data:\n  train: train.jsonl\n  cutoff_len: 64\ntrain:\n  max_steps: 1\n")


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _nothing_started(srv: LiveConsole) -> None:
    assert list(srv.state.ws.runs.iterdir()) == [], "a refused request created a run folder"
    assert srv.state.jobs.started_here() == [] and psutil.Process().children(recursive=True) == [], \
        "a refused request started a process"


@pytest.fixture
def work(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The console's folder: data, a copy of the tiny model, and a secret beside the folder."""
    work = tmp_path / "work"
    work.mkdir()
    write_jsonl(work / "train.jsonl", rows(8))
    shutil.copytree(tiny_model_dir, work / "model")
    (tmp_path / "secret.json").write_text(json.dumps({k: "s3cr3t" for k in SECRET_KEYS}))
    return work


@pytest.fixture
def srv(work: Path) -> Iterator[LiveConsole]:
    """Without a token: how an embedding program (and the old default) serves loopback; the Host
    and Origin checks are then the only guard."""
    with LiveConsole(work / "runs", work) as s:
        yield s


# -- item 1: Host (DNS rebinding) and Origin (cross-site requests) --------------------------------


def test_rebinding_host_reads_nothing_and_starts_nothing(srv, work):
    evil = {"Host": f"127.attacker.example:{srv.port}"}
    r = srv.client.get("/api/files", params={"dir": str(work)}, headers=evil)
    assert r.status_code == 403 and _error(r)["code"] == "host_not_allowed", r.text
    assert "train.jsonl" not in r.text
    r = srv.client.post("/api/runs", json={"yaml": _yaml("pwned", work / "model")}, headers=evil)
    assert r.status_code == 403 and _error(r)["code"] == "host_not_allowed", r.text
    assert srv.client.get("/", headers=evil).status_code == 403  # the page too: no foothold at all
    _nothing_started(srv)
    # Control: the same body from the console's own address is a valid run (checked, not started).
    r = srv.client.post("/api/config/check", json={"yaml": _yaml("pwned", work / "model"), "estimate": False})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", [
    "127.attacker.example:{port}", "127.0.0.1.attacker.example:{port}", "localhost.attacker.example:{port}",
    "127.1:{port}", "127.0.0.2:{port}", "2130706433:{port}", "0.0.0.0:{port}", "attacker.example:{port}",
    "localhost:{other}", "127.0.0.1:{other}", "[::1]:{other}", "127.0.0.1", "localhost.:{port}",
])
def test_only_exact_loopback_names_on_this_port_are_served(srv, host):
    value = host.format(port=srv.port, other=free_port())
    r = srv.client.get("/api/runs", headers={"Host": value})
    assert r.status_code == 403 and _error(r)["code"] == "host_not_allowed", (value, r.text)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}@evil.example", "127.0.0.1:{port}:1", "127.0.0.1:99999",
                                  "127.0.0.1 :{port}", "[::1.evil]:{port}", "127.0.0.1:{port}/x", "127.0.0.1:-1"])
def test_malformed_host_is_refused(srv, host):
    value = host.format(port=srv.port)
    r = srv.client.get("/api/runs", headers={"Host": value})
    assert r.status_code in (400, 403), (value, r.status_code)
    assert _error(r)["code"] in ("bad_host", "host_not_allowed")


def test_loopback_names_are_served_in_any_case(srv):
    for name in ("127.0.0.1", "localhost", "LocalHost", "[::1]"):
        r = srv.client.get("/api/runs", headers={"Host": f"{name}:{srv.port}"})
        assert r.status_code == 200, (name, r.text)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:{other}",
                                    "https://127.0.0.1:{port}", "http://127.attacker.example:{port}",
                                    "http://localhost:{port}"])
def test_cross_origin_post_is_refused(srv, work, origin):
    value = origin.format(port=srv.port, other=free_port())
    r = srv.client.post("/api/runs", json={"yaml": _yaml("csrf", work / "model")}, headers={"Origin": value})
    assert r.status_code == 403 and _error(r)["code"] == "cross_origin", (value, r.text)
    _nothing_started(srv)


def test_page_flow_with_token_cookie_and_own_origin(work):
    """What the browser does: open the printed URL, get the cookie, POST with its own Origin."""
    with LiveConsole(work / "runs", work, token=TOKEN) as s, httpx.Client(base_url=s.url) as browser:
        page = browser.get(f"/?token={TOKEN}", follow_redirects=True)
        assert page.status_code == 200 and "<script" in page.text
        # no-referrer would make browsers send "Origin: null" on the page's own POSTs (refused)
        assert page.headers["referrer-policy"] == "same-origin"
        own = {"Origin": s.url}
        assert browser.get("/api/runs").json()["runs"] == []
        r = browser.post("/api/config/check", json={"yaml": _yaml("ok", work / "model"), "estimate": False},
                         headers=own)
        assert r.status_code == 200, r.text
        assert browser.post("/api/config/check", json={"yaml": "name: x\n"},
                            headers={"Origin": "http://evil.example"}).status_code == 403
        # A script (no Origin) with the token is served; without it, not.
        assert httpx.get(f"{s.url}/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(f"{s.url}/api/runs").status_code == 401


def test_no_tokenless_console_beyond_loopback(tmp_path):
    from sftkit.console.app import create_app

    for host in ("0.0.0.0", "192.168.1.10", "::", "127.attacker.example"):
        with pytest.raises(ValueError, match="needs an access token"):
            create_app(runs=tmp_path / "runs", base=tmp_path, token=None, host=host)


# -- item 2: the API reads only the console's folders --------------------------------------------


def test_no_path_outside_the_console_folders_is_read(srv, work):
    outside = work.parent / "secret.json"
    (work / "link.json").symlink_to(outside)
    (work / ".config").mkdir()
    (work / ".config" / "creds.jsonl").write_text(json.dumps({k: 1 for k in SECRET_KEYS}) + "\n")
    cases = [
        ("POST", "/api/data/check", {"files": [{"path": str(outside)}]}),
        ("POST", "/api/data/check", {"files": [{"path": "../secret.json"}]}),
        ("POST", "/api/data/check", {"files": [{"path": "link.json"}]}),
        ("POST", "/api/data/check", {"files": [{"path": ".config/creds.jsonl"}]}),
        ("POST", "/api/data/check", {"files": [{"path": str(work.parent / "no-such.json")}]}),  # no oracle
        ("POST", "/api/data/stats", {"files": [str(outside)], "model": str(work / "model")}),
        ("POST", "/api/data/stats", {"files": ["train.jsonl"], "model": str(work / "model"),
                                     "template": str(outside)}),
        ("POST", "/api/data/stats", {"files": ["train.jsonl"], "model": "/etc"}),
        ("POST", "/api/config/check", {"yaml": _yaml("x", work / "model").replace("train.jsonl", str(outside)),
                                       "estimate": False}),
        ("POST", "/api/config/check", {"yaml": _yaml("x", work / "model") + f"template: {outside}\n",
                                       "estimate": False}),
        ("POST", "/api/config/check", {"yaml": _yaml("x", work / "model") + f"  deepspeed: {outside}\n",
                                       "estimate": False}),
        ("POST", "/api/chat", {"model": "/etc", "prompt": "hi"}),
        ("GET", "/api/files?dir=/", None), ("GET", "/api/files?dir=..", None), ("GET", "/api/files?dir=.config", None),
    ]
    for method, path, body in cases:
        r = srv.client.request(method, path, json=body)
        assert r.status_code == 403 and _error(r)["code"] == "path_not_allowed", (path, body, r.text)
        assert not any(k in r.text for k in SECRET_KEYS)
    top = srv.client.get("/api/files").json()
    assert top["parent"] is None and str(work) in top["roots"]  # the picker cannot climb out
    assert ".config" not in {e["name"] for e in top["entries"]}
    _nothing_started(srv)


def test_data_check_does_not_list_the_keys_of_a_non_data_file(srv, work):
    (work / "settings.json").write_text(json.dumps({k: "s3cr3t" for k in SECRET_KEYS}))
    r = srv.client.post("/api/data/check", json={"files": [{"path": "settings.json"}, {"path": "train.jsonl"}]})
    assert r.status_code == 200, r.text
    settings, train = r.json()["files"]
    assert (settings["valid"], settings["rejected"]) == (0, 1)
    assert settings["rejects"][0]["reason"].startswith("no known layout fields")
    assert not any(k in r.text for k in SECRET_KEYS), r.text
    assert train["valid"] == 8  # control: a data file inside the folder is checked as before


def test_allow_adds_a_readable_folder(work, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    write_jsonl(models / "extra.jsonl", rows(2))
    with LiveConsole(work / "runs", work, allow=(models,)) as s:
        r = s.client.post("/api/data/check", json={"files": [{"path": str(models / "extra.jsonl")}]})
        assert r.status_code == 200 and r.json()["valid"] == 2, r.text
        assert str(models) in s.client.get("/api/files").json()["roots"]
        r = s.client.post("/api/data/check", json={"files": [{"path": str(tmp_path / "secret.json")}]})
        assert r.status_code == 403
