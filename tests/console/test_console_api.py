"""The console API over real HTTP (uvicorn on a free port, httpx): the guards (token, Host,
content type), the config form and YAML, the data check and statistics, and bad input that
must be refused with a 4xx JSON error while nothing is created or started."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import psutil
import pytest
import yaml
from console_helpers import TOKEN, LiveConsole, run_yaml, wait_for

from sftkit.core.configio import load_config
from sftkit.core.fielddocs import field_docs

STATIC = Path(__file__).resolve().parents[2] / "src" / "sftkit" / "console" / "static"


def children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def assert_nothing_started(live: LiveConsole, before: set[str]) -> None:
    runs = live.state.ws.runs
    assert {p.name for p in runs.iterdir()} == before, "a refused request created a folder"
    assert live.state.jobs.started_here() == [] and children() == [], "a refused request started a process"


def err(r) -> str:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]["message"]


# -- the page and the guards -----------------------------------------------------------------------


def test_page_is_served_and_self_contained(live):
    r = live.client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<script type="module" src="/static/js/main.js">' in r.text
    for f in STATIC.rglob("*"):
        if f.is_file():
            text = f.read_text(encoding="utf-8")
            # The only URL allowed is the SVG namespace (an identifier, never fetched).
            urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
            assert not urls, f"{f.name} references {urls}: the page must work offline"
            assert live.client.get(f"/static/{f.relative_to(STATIC).as_posix()}").status_code == 200


def test_token_required_on_every_api(live_token, workdir):
    c = live_token.client
    bare = {"Authorization": ""}
    for method, path in [("GET", "/api/health"), ("GET", "/api/runs"), ("GET", "/api/config/schema"),
                         ("POST", "/api/runs"), ("POST", "/api/data/check"), ("POST", "/api/chat"),
                         ("GET", "/api/runs/x/files/report.html"), ("POST", "/api/runs/x/stop")]:
        for headers in (bare, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
            r = c.request(method, path, headers={**headers, "Content-Type": "application/json"}, content=b"{}")
            assert r.status_code == 401, (method, path, headers)
            assert err(r).startswith("missing or wrong access token")
    assert c.get("/api/health").json()["token_required"] is True  # the Bearer header of the client
    assert c.get("/", headers=bare).status_code == 200  # the empty page shell asks for the token
    # Opening /?token=... moves the token into an HttpOnly cookie, which then authorises the API.
    r = c.get(f"/?token={TOKEN}", headers=bare, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    # One cookie name per port: two consoles on one machine do not overwrite each other's.
    name = f"sftkit_console_token_{live_token.port}"
    assert r.headers["set-cookie"].startswith(f"{name}={TOKEN};")
    cookie = {"Cookie": f"{name}={TOKEN}", "Authorization": ""}
    assert c.get("/api/runs", headers=cookie).status_code == 200
    for wrong in (f"{name}=nope", f"sftkit_console_token={TOKEN}", f"sftkit_console_token_1{live_token.port}={TOKEN}"):
        assert c.get("/api/runs", headers={"Cookie": wrong, "Authorization": ""}).status_code == 401, wrong
    assert not (workdir / "runs" / "x").exists()


def test_foreign_host_and_non_json_posts_are_refused(live, workdir, tiny_model_dir):
    before = {p.name for p in live.state.ws.runs.iterdir()}
    r = live.client.get("/api/runs", headers={"Host": "attacker.example:7860"})
    assert r.status_code == 403 and "DNS rebinding" in err(r)
    body = json.dumps({"yaml": run_yaml("csrf", tiny_model_dir, 2)})
    r = live.client.post("/api/runs", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert_nothing_started(live, before)


# -- config: schema, form, YAML --------------------------------------------------------------------


def test_schema_has_every_field_with_help_and_default(live):
    fields = {f["key"]: f for f in live.client.get("/api/config/schema").json()["fields"]}
    for fd in field_docs():
        if fd.key == "output_dir":
            assert fd.key not in fields  # the run folder comes from the name
            continue
        f = fields[fd.key]
        assert f["doc"] == fd.doc and f["doc"], fd.key
        assert f["required"] == fd.required
        if not fd.required:
            assert f["default_text"] is not None
    assert fields["method.type"]["kind"] == "enum" and fields["method.type"]["choices"] == ["lora", "qlora", "full",
                                                                                          "freeze"]
    assert fields["train.bf16"]["kind"] == "bool" and fields["data.train"]["kind"] == "sources"
    assert fields["train.learning_rate"]["default_text"] == "0.0002"


def test_form_yaml_round_trip(live, workdir, tiny_model_dir):
    values = {"name": "中文运行", "model.name_or_path": str(tiny_model_dir), "data.train": "train.jsonl",
              "data.test": "{path: test.jsonl, format: messages}", "train.max_steps": "3", "train.bf16": "true",
              "method.target_modules": "[q_proj, v_proj]", "train.learning_rate": "0.0002"}
    res = live.client.post("/api/config/from_form", json={"values": values}).json()
    assert res["errors"] == []
    raw = yaml.safe_load(res["yaml"])
    assert raw["data"]["train"] == [str(workdir / "train.jsonl")]  # resolved against the console's folder
    assert raw["data"]["test"] == [{"path": str(workdir / "test.jsonl"), "format": "messages"}]
    assert raw["train"] == {"max_steps": 3, "bf16": True}  # the default learning rate is left out
    assert raw["method"]["target_modules"] == ["q_proj", "v_proj"]
    back = live.client.post("/api/config/to_form", json={"yaml": res["yaml"]}).json()
    assert back["errors"] == []
    assert back["values"]["name"] == "中文运行" and back["values"]["train.max_steps"] == "3"
    assert back["values"]["train.bf16"] == "true" and back["values"]["method.target_modules"] == "[q_proj, v_proj]"
    assert back["values"]["data.test"] == f"{{path: {workdir / 'test.jsonl'}, format: messages}}"

    bad = live.client.post("/api/config/from_form", json={"values": {
        "data.train": "train.jsonl", "train.learning_rate": "-1", "train.bf16": "maybe", "nope.key": "1"}}).json()
    keys = {e["key"] for e in bad["errors"]}
    assert {"train.learning_rate", "train.bf16", "nope.key"} <= keys
    r = live.client.post("/api/config/to_form", json={"yaml": "data:\n  train: a.jsonl\ntrain:\n  learning_rat: 1\n"})
    (e,) = r.json()["errors"]
    assert "YAML:4" in e["message"] and "train.learning_rate" in e["message"]


def test_check_shows_the_yaml_the_cli_runs(live, workdir, tiny_model_dir):
    text = run_yaml("check-me", tiny_model_dir, 3, test=True) + "output_dir: /somewhere/else\n"
    res = live.client.post("/api/config/check", json={"yaml": text, "estimate": True}).json()
    run_dir = workdir / "runs" / "check-me"
    assert res["command"] == f"sft train {run_dir / 'launch.yaml'}"
    assert any("output_dir" in n for n in res["notes"])  # the replaced output_dir is said out loud
    assert res["estimate"]["fits"] is True and res["estimate"]["total_gb"] > 0
    # The shown YAML, saved anywhere, is the same config sft train reads (paths absolute).
    saved = workdir / "elsewhere" / "x.yaml"
    saved.parent.mkdir()
    saved.write_text(res["run_yaml"], encoding="utf-8")
    cfg = load_config(saved)
    original = load_config(_write(workdir / "orig.yaml", text))
    assert cfg.model_copy(update={"output_dir": None}) == original.model_copy(update={"output_dir": None})
    assert cfg.output_dir == run_dir
    assert not run_dir.exists()  # checking creates nothing


def _write(p: Path, text: str) -> Path:
    p.write_text(text, encoding="utf-8")
    return p


# -- bad input starts nothing --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["yaml_error", "unknown_key", "missing_file", "missing_model", "not_a_model",
                                  "uncached_hub_id", "escape_name",
                                  "slash_name", "hidden_name", "empty", "extra_field", "not_json"])
def test_bad_start_requests_start_nothing(live, workdir, tiny_model_dir, case):
    good = run_yaml("ok", tiny_model_dir, 2)
    bodies = {
        "yaml_error": {"yaml": "name: [unclosed\n"},
        "unknown_key": {"yaml": good.replace("max_steps", "max_stepz")},
        "missing_file": {"yaml": good.replace("train.jsonl", "missing.jsonl")},
        "missing_model": {"yaml": good.replace(str(tiny_model_dir), "/no/such/model")},
        "not_a_model": {"yaml": good.replace(str(tiny_model_dir), str(workdir))},
        "uncached_hub_id": {"yaml": good.replace(str(tiny_model_dir), "nobody/not-cached-model")},
        "escape_name": {"yaml": good.replace("name: ok", "name: ../escaped")},
        "slash_name": {"yaml": good.replace("name: ok", "name: a/b")},
        "hidden_name": {"yaml": good.replace("name: ok", "name: .hidden")},
        "empty": {"yaml": "  "},
        "extra_field": {"yaml": good, "run_now": True},
        "not_json": None,
    }
    before = {p.name for p in live.state.ws.runs.iterdir()}
    if case == "not_json":
        r = live.client.post("/api/runs", content=b"{not json", headers={"Content-Type": "application/json"})
    else:
        r = live.client.post("/api/runs", json=bodies[case])
    assert 400 <= r.status_code < 500, r.text
    msg = err(r)
    expect = {"unknown_key": "max_steps", "missing_file": "missing.jsonl", "missing_model": "/no/such/model",
              "not_a_model": "not a model", "uncached_hub_id": "not available offline",
              "escape_name": "run name", "slash_name": "run name", "hidden_name": "run name", "yaml_error": "YAML"}
    if case in expect:
        assert expect[case] in msg, msg
    assert_nothing_started(live, before)
    assert not (workdir / "escaped").exists()


def test_existing_run_name_conflicts(live, workdir, tiny_model_dir):
    (workdir / "runs" / "taken").mkdir(parents=True)
    r = live.client.post("/api/runs", json={"yaml": run_yaml("taken", tiny_model_dir, 2)})
    assert r.status_code == 409 and "already exists" in err(r)
    assert list((workdir / "runs" / "taken").iterdir()) == [] and children() == []


def test_run_routes_refuse_names_outside_the_runs_folder(live, workdir):
    (workdir / "secret.txt").write_text("x")
    for path in ["/api/runs/..%2Fsecret.txt", "/api/runs/%2E%2E", "/api/runs/.hidden", "/api/runs/nope",
                 "/api/runs/nope/metrics", "/api/runs/nope/log"]:
        r = live.client.get(path)
        assert r.status_code in (400, 404), (path, r.status_code)
    run = workdir / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: r1\n")
    assert live.client.get("/api/runs/r1/files/config.yaml").text == "name: r1\n"
    for name in ["..%2F..%2Fsecret.txt", "fingerprint.json", "secret.txt"]:
        assert live.client.get(f"/api/runs/r1/files/{name}").status_code == 404
    for action in ("stop", "resume", "evaluate"):
        r = live.client.post(f"/api/runs/r1/{action}", json={})
        assert r.status_code == 409, (action, r.text)
    assert children() == []


# -- data check and statistics -----------------------------------------------------------------------


def test_data_check_reports_every_row(live, workdir):
    r = live.client.post("/api/data/check", json={"files": [{"path": "bad.jsonl"}, {"split": "test",
                                                                                      "path": "test.jsonl"}]})
    res = r.json()
    bad, test = res["files"]
    assert (bad["total"], bad["valid"], bad["rejected"]) == (4, 3, 1)
    assert bad["rejects"][0]["line"] == 4 and bad["rejects"][0]["file"].endswith("bad.jsonl")
    assert test["format"] == "messages" and test["valid"] == 8 and res["rejected"] == 1
    r = live.client.post("/api/data/check", json={"files": [{"path": "train.jsonl"}, {"path": "nope.jsonl"}]})
    assert r.status_code == 400 and "nope.jsonl" in err(r) and err(r).startswith("files.1.path")
    assert live.client.post("/api/data/check", json={"files": []}).status_code == 400


def test_length_stats_match_the_data_module(live, workdir, tiny_model_dir):
    from sftkit.data import load_file
    from sftkit.data import stats as st
    from sftkit.hub.models import load_tokenizer
    from sftkit.infer.engine import build_renderer

    res = live.client.post("/api/data/stats", json={"files": ["train.jsonl"], "model": str(tiny_model_dir),
                                                    "cutoff": 64}).json()
    renderer = build_renderer(load_tokenizer(tiny_model_dir))
    direct = st.compute(load_file(workdir / "train.jsonl").conversations, renderer, 64)
    assert res["recommended_cutoff"] == direct["recommended_cutoff"]
    assert res["tokens"] == direct["tokens"] and res["rows"] == 32
    assert sum(res["histogram"]["counts"]) == 32 and any(c["cutoff"] == 64 for c in res["cut"])
    r = live.client.post("/api/data/stats", json={"files": ["train.jsonl"], "model": "no/model/here"})
    assert r.status_code == 400 and "no/model/here" in err(r)


def test_file_listing(live, workdir, tiny_model_dir):
    res = live.client.get("/api/files").json()
    assert res["dir"] == str(workdir)
    names = {e["name"]: e["kind"] for e in res["entries"]}
    assert names["train.jsonl"] == "file" and names["runs"] == "dir"
    model = live.client.get(f"/api/files?dir={tiny_model_dir.parent}").json()
    assert {e["name"]: e["kind"] for e in model["entries"]}[tiny_model_dir.name] == "model"
    assert live.client.get("/api/files?dir=no/such/dir").status_code == 400
    assert live.client.get("/api/files?dir=/no/such/dir").status_code == 403  # outside the console's folders


# -- status from facts ------------------------------------------------------------------------------------


def _fake_run(root: Path, name: str, **files: object) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\ntrain:\n  max_steps: 10\n")
    for fname, content in files.items():
        (run / fname.replace("_json", ".json")).write_text(json.dumps(content))
    return run


def test_status_comes_from_real_facts(live, workdir):
    import subprocess
    import sys

    runs = workdir / "runs"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_run(runs, "cli-finished", train_summary_json={"global_step": 10})
    _fake_run(runs, "cli-partial")
    _fake_run(runs, "killed", console_job_json={"pid": dead.pid})
    _fake_run(runs, "killed-after-stop", console_job_json={"pid": dead.pid}, console_stop_json={"at": 0})
    _fake_run(runs, "done-fail", console_job_json={"pid": dead.pid},
              console_state_json={"done": True, "outcome": "failed", "step": "train", "returncode": 2})
    # A live pid that is not a console job (this test process) never makes a run "running".
    _fake_run(runs, "pid-reused", console_job_json={"pid": os.getpid()})
    got = {r["name"]: (r["status"], r["detail"]) for r in live.client.get("/api/runs").json()["runs"]}
    assert got["cli-finished"][0] == "finished"
    assert got["cli-partial"][0] == "incomplete"
    assert got["killed"] == ("failed", "the job process ended without recording an exit code (killed?)")
    assert got["killed-after-stop"][0] == "stopped"
    assert got["done-fail"] == ("failed", "train exited with code 2")
    assert got["pid-reused"][0] == "failed"


def test_metrics_polling_survives_a_rewrite(live, workdir):
    run = _fake_run(workdir / "runs", "m")
    lines = [json.dumps({"step": s, "loss": 3.0 - s / 10}) for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')  # a half-written line
    first = live.client.get("/api/runs/m/metrics").json()
    assert [r["step"] for r in first["rows"]] == [1, 2, 3, 4, 5] and first["reset"]
    with (run / "metrics.jsonl").open("a") as f:
        f.write('ss": 2.4}\n')
    nxt = live.client.get(f"/api/runs/m/metrics?offset={first['offset']}&digest={first['digest']}").json()
    assert [r["step"] for r in nxt["rows"]] == [6] and not nxt["reset"]
    # A resume rewrites metrics.jsonl back to its checkpoint: the client gets everything again.
    (run / "metrics.jsonl").write_text("\n".join([*lines[:2], json.dumps({"step": 3, "loss": 9.0})]) + "\n")
    again = live.client.get(f"/api/runs/m/metrics?offset={nxt['offset']}&digest={nxt['digest']}").json()
    assert again["reset"] and [r["loss"] for r in again["rows"]][-1] == 9.0


def test_log_never_splits_a_chinese_character(live, workdir):
    run = _fake_run(workdir / "runs", "lg")
    (run / "console.log").write_bytes("训练开始\n".encode() + "损失".encode()[:4])  # 损 + 1 byte of 失
    first = live.client.get("/api/runs/lg/log?offset=0").json()
    assert first["text"] == "训练开始\n损" and "\ufffd" not in first["text"]
    with (run / "console.log").open("ab") as f:
        f.write("损失".encode()[4:] + "下降\n".encode())
    nxt = live.client.get(f"/api/runs/lg/log?offset={first['offset']}").json()
    assert nxt["text"] == "失下降\n"


# -- chat input ---------------------------------------------------------------------------------------------


def test_chat_refuses_bad_requests(live, workdir, tiny_model_dir):
    (workdir / "runs" / "untrained").mkdir(parents=True)
    (workdir / "runs" / "untrained" / "config.yaml").write_text("name: untrained\n")
    cases = [({"prompt": "你好"}, 400, "exactly one"),
             ({"run": "x", "model": "y", "prompt": "你好"}, 400, "exactly one"),
             ({"run": "missing", "prompt": "你好"}, 404, "missing"),
             ({"run": "untrained", "prompt": "你好"}, 409, "no trained weights"),
             ({"model": "no/such/model", "prompt": "你好"}, 400, "no/such/model"),
             ({"model": "/no/such/model", "prompt": "你好"}, 403, "outside the folders this console reads"),
             ({"model": str(tiny_model_dir), "prompt": ""}, 400, "prompt"),
             ({"model": str(tiny_model_dir), "prompt": "hi", "temperature": 5}, 400, "temperature"),
             ({"model": str(tiny_model_dir), "prompt": "hi", "baseline": "no/base/x"}, 400, "no/base/x"),
             ({"model": str(tiny_model_dir), "prompt": "hi", "baseline": "/no/base"}, 403, "/no/base")]
    for body, status, needle in cases:
        r = live.client.post("/api/chat", json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in err(r), (body, err(r))
    long = "查询余额" * 1500  # more tokens than the tiny model's 2048-token context
    r = live.client.post("/api/chat", json={"model": str(tiny_model_dir), "prompt": long, "baseline": "none"})
    assert r.status_code == 400 and "context" in err(r)


def test_chat_streams_both_sides(live, tiny_model_dir):
    body = {"model": str(tiny_model_dir), "baseline": str(tiny_model_dir), "prompt": "如何查询用户余额？",
            "max_new_tokens": 5}
    with live.client.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in r.iter_lines() if line]
    done = {e["side"]: e for e in events if e.get("done")}
    assert set(done) == {"model", "baseline"} and events[-1] == {"event": "end"}
    text = {s: "".join(e.get("delta", "") for e in events if e.get("side") == s) for s in done}
    assert all(done[s]["completion_tokens"] <= 5 for s in done)
    assert text["model"] == text["baseline"]  # the same weights, greedy: the same answer
    sides = [e["side"] for e in events if "delta" in e]
    assert sides[:2] == ["model", "baseline"]  # interleaved, not one after the other
    wait_for(lambda: children() == [], 5, "no child process")


def test_job_outcome_is_recorded_by_the_job_process(live, workdir):
    """The job runs the CLI steps and writes their exit codes (here `sft report`, which is quick)."""
    runs = workdir / "runs"
    ok = _fake_run(runs, "report-ok")
    bad = _fake_run(runs, "report-fails")
    for run in (ok, bad):
        (run / "config.yaml").write_text(f"name: {run.name}\ndata:\n  train: {workdir / 'train.jsonl'}\n")
        (run / "adapter").mkdir()  # "trained": the evaluate action is offered
    (bad / "report.html").mkdir()  # sft report cannot write its file there: it exits with code 2
    for name in ("report-ok", "report-fails"):
        r = live.client.post(f"/api/runs/{name}/evaluate", json={})
        assert r.status_code == 200 and r.json()["job"]["steps"] == ["report"], r.text  # no data.test: no eval
    done = lambda n: (d := live.client.get(f"/api/runs/{n}").json())["status"] != "running" and d  # noqa: E731
    d_ok, d_bad = wait_for(lambda: done("report-ok"), 60, "report-ok"), wait_for(lambda: done("report-fails"), 60, "x")
    assert d_ok["status"] == "finished" and (ok / "report.html").is_file()
    assert d_bad["status"] == "failed" and d_bad["detail"] == "report exited with code 2"
    state = json.loads((bad / "console_state.json").read_text())
    assert state["returncodes"] == {"report": 2} and state["done"] and not state["stopped"]
    log = live.client.get("/api/runs/report-fails/log?offset=0").json()["text"]
    assert "== sftkit console: report: sft report" in log and "error:" in log  # the CLI's message is captured
    wait_for(lambda: children() == [], 10, "the job processes to be reaped")
