"""Canary release and monitoring: a real uvicorn server with two tiny models, real clients (openai,
httpx). Routing share and stickiness over 1,000 fixed user ids, the routing-key order (user field,
X-User-Id header, client address), /metrics parsed by prometheus_client's own parser, the request
log and `sft serve-report` over it, and `sft serve --canary-of` end to end in a subprocess."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
prom_parser = pytest.importorskip("prometheus_client.parser")

from servelib import LiveServer, free_port, tiny_engine  # noqa: E402
from sftkit.core.errors import RefusedPath  # noqa: E402
from sftkit.infer.canary import Canary, bucket  # noqa: E402
from sftkit.infer.requestlog import RequestLog  # noqa: E402

KEY = "sk-canary"
AUTH = {"Authorization": f"Bearer {KEY}"}
SHARE = 0.1
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def log_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve_log") / "requests.jsonl"


@pytest.fixture(scope="module")
def live(tiny_model_dir, log_path):
    from sftkit.infer.server import create_app

    stable, new = tiny_engine(tiny_model_dir, 256), tiny_engine(tiny_model_dir, 256)
    app = create_app(stable, "v1", api_key=KEY, max_batch=16, batch_wait_s=0.005, aliases={"runs/v1"},
                     canary=Canary(new, "v2", SHARE, {"runs/v2"}), request_log=RequestLog(log_path))
    with LiveServer(app) as srv:
        yield srv


def post(client: httpx.Client, url: str, body: dict, **headers: str) -> httpx.Response:
    return client.post(url + "/chat/completions", headers={**AUTH, **headers}, timeout=60,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0,
                             "model": "v1", **body})


@pytest.mark.slow  # 1,100 requests: ~25 s on 2 busy cores
def test_share_over_1000_users_and_stickiness(live):
    ids = [f"user-{i:04d}" for i in range(1000)]
    with httpx.Client() as c, ThreadPoolExecutor(16) as pool:
        answered = list(pool.map(lambda u: post(c, live.url, {"user": u}).json()["model"], ids))
        # a hundred of them again, in another order: every one lands where it did
        again = list(pool.map(lambda u: post(c, live.url, {"user": u}).json()["model"], ids[:100][::-1]))[::-1]
    assert answered[:100] == again
    # routing is the documented hash, id by id
    assert answered == ["v2" if bucket(u) < SHARE else "v1" for u in ids]
    # and the hash spreads fixed ids as a fair coin would: Binomial(1000, 0.1) within 4 standard deviations
    # (a uniform hash fails this for 1 in ~16,000 choices of ids; these ids are fixed, so it is deterministic)
    n = Counter(answered)["v2"]
    assert abs(n - 1000 * SHARE) <= 4 * math.sqrt(1000 * SHARE * (1 - SHARE)), n


def test_routing_key_order_and_pinning(live):
    client = openai.OpenAI(base_url=live.url, api_key=KEY, max_retries=0, timeout=60)
    canary_user = next(u for u in (f"u{i}" for i in range(1000)) if bucket(u) < SHARE)
    stable_user = next(u for u in (f"u{i}" for i in range(1000)) if bucket(u) >= SHARE)
    msgs = [{"role": "user", "content": "你好"}]
    for _ in range(3):  # sticky through the real OpenAI client's `user` field
        assert client.chat.completions.create(model="v1", messages=msgs, max_tokens=2, user=canary_user).model == "v2"
        assert client.chat.completions.create(model="v1", messages=msgs, max_tokens=2, user=stable_user).model == "v1"
    with httpx.Client() as c:
        # no user field: the X-User-Id header decides
        assert post(c, live.url, {}, **{"X-User-Id": canary_user}).json()["model"] == "v2"
        # the user field wins over the header
        assert post(c, live.url, {"user": stable_user}, **{"X-User-Id": canary_user}).json()["model"] == "v1"
        # neither: the client address (127.0.0.1 here), the same every time
        by_address = {post(c, live.url, {}).json()["model"] for _ in range(3)}
        assert by_address == {"v2" if bucket("127.0.0.1") < SHARE else "v1"}
        # naming the canary (or its reference) picks it whoever asks; the stable reference is split as its id
        assert post(c, live.url, {"model": "v2", "user": stable_user}).json()["model"] == "v2"
        assert post(c, live.url, {"model": "runs/v2", "user": stable_user}).json()["model"] == "v2"
        assert post(c, live.url, {"model": "runs/v1", "user": canary_user}).json()["model"] == "v2"
        r = post(c, live.url, {"model": "gpt-9"})
        assert r.status_code == 404 and r.json()["error"]["message"].endswith("this server serves 'v1', 'v2'.")
    assert [m.id for m in client.models.list().data] == ["v1", "v2"]
    assert client.models.retrieve("v2").id == "v2"
    health = httpx.get(live.root + "/health", headers=AUTH, timeout=10).json()
    assert health["model"] == "v1" and health["canary"]["model"] == "v2" and health["canary"]["share"] == SHARE
    assert "model" not in httpx.get(live.root + "/health", timeout=10).json()["canary"]  # no key: no names


def scrape(live) -> dict[str, dict[tuple, float]]:
    r = httpx.get(live.root + "/metrics", headers=AUTH, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for fam in prom_parser.text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_in_prometheus_format(live):
    assert httpx.get(live.root + "/metrics", timeout=10).status_code == 401  # behind the key like the API
    before = scrape(live)
    client = openai.OpenAI(base_url=live.url, api_key=KEY, max_retries=0, timeout=60)
    user = next(u for u in (f"m{i}" for i in range(1000)) if bucket(u) >= SHARE)
    done = sum(client.chat.completions.create(model="v1", messages=[{"role": "user", "content": f"q{i}"}],
                                              max_tokens=3, temperature=0, user=user).usage.completion_tokens
               for i in range(4))
    chunks = list(client.chat.completions.create(model="v2", messages=[{"role": "user", "content": "s"}],
                                                 max_tokens=3, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = chunks[-1].usage.completion_tokens
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="v1", messages=[{"role": "user", "content": "x"}], max_tokens=0)
    httpx.post(live.url + "/chat/completions", headers=AUTH, content=b"{not json", timeout=10)
    after = scrape(live)

    def delta(name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        return after.get(name, {}).get(key, 0.0) - before.get(name, {}).get(key, 0.0)

    assert delta("sftkit_requests_total", model="v1", endpoint="chat", code="200") == 4
    assert delta("sftkit_requests_total", model="v2", endpoint="chat", code="200") == 1
    # max_tokens=0 fails validation before routing; so does a body that does not parse
    assert delta("sftkit_requests_total", model="unrouted", endpoint="chat", code="400") == 2
    assert delta("sftkit_request_errors_total", model="unrouted", endpoint="chat", type="invalid_request_error") == 2
    assert delta("sftkit_completion_tokens_total", model="v1") == done
    assert delta("sftkit_completion_tokens_total", model="v2") == streamed
    assert delta("sftkit_request_latency_seconds_count", model="v1") == 4
    assert delta("sftkit_time_to_first_token_seconds_count", model="v2") == 1
    assert delta("sftkit_time_to_first_token_seconds_count", model="v1") == 0
    buckets = sorted((float(dict(k)["le"]), v) for k, v in after["sftkit_request_latency_seconds_bucket"].items()
                     if dict(k)["model"] == "v1")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1] == (math.inf, after["sftkit_request_latency_seconds_count"][(("model", "v1"),)])
    assert after["sftkit_completion_tokens_per_second"][(("model", "v1"),)] > 0
    assert after["sftkit_queue_length"][(("model", "v2"),)] == 0
    assert after["sftkit_model_info"] == {(("model", "v1"), ("role", "stable")): 1.0,
                                          (("model", "v2"), ("role", "canary")): 1.0}
    assert after["sftkit_canary_share"] == {(): SHARE}


def test_request_log_and_serve_report(live, log_path):
    from typer.testing import CliRunner

    from sftkit.cli import app

    with httpx.Client() as c:
        for i in range(5):
            post(c, live.url, {"user": f"r{i}"})
        post(c, live.url, {"model": "v2", "user": "pinned"})
    time.sleep(0.2)  # the last response is sent just before its line is written
    rows = [json.loads(x) for x in log_path.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["share"] == SHARE
    assert rows[0]["models"] == [{"model": "v1", "role": "stable"}, {"model": "v2", "role": "canary"}]
    reqs = [r for r in rows if r["event"] == "request"]
    last = reqs[-1]
    assert last["model"] == "v2" and last["pinned"] is True and last["key"] == "user" and last["status"] == 200
    assert last["completion_tokens"] == 1 and last["prompt_tokens"] > 0 and last["latency_s"] > 0
    assert "pinned" not in json.dumps([r.get("user") for r in reqs])  # no user ids in the log
    r = CliRunner().invoke(app, ["serve-report", str(log_path), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    by = {m["model"]: m for m in rep["models"]}
    assert rep["requests"] == len(reqs)
    for name in ("v1", "v2"):
        mine = [x for x in reqs if x["model"] == name]
        assert by[name]["requests"] == len(mine)
        assert by[name]["completion_tokens_total"] == sum(x["completion_tokens"] for x in mine)
    assert by["v1"]["role"] == "stable" and by["v2"]["role"] == "canary"
    assert rep["unrouted"] == sum(1 for x in reqs if x["model"] is None)
    split = [x for x in reqs if x["model"] and not x["pinned"]]
    assert rep["canary_share"]["observed_requests"] == round(sum(x["role"] == "canary" for x in split) / len(split), 4)
    assert set(rep["canary_vs_stable"]["v2"]) >= {"server_error_rate_diff", "latency_p50_ratio", "error_rates_differ"}
    table = CliRunner().invoke(app, ["serve-report", str(log_path)])
    assert table.exit_code == 0 and "v2" in table.output and "canary share: 10% of users" in table.output


def test_request_log_refuses_a_file_that_is_not_one(tmp_path):
    other = tmp_path / "notes.jsonl"
    other.write_text('{"prompt": "mine"}\n', encoding="utf-8")
    with pytest.raises(RefusedPath, match="not an sft serve request log"):
        RequestLog(other)
    assert other.read_text(encoding="utf-8") == '{"prompt": "mine"}\n'
    fresh = tmp_path / "logs" / "requests.jsonl"
    log = RequestLog(fresh)
    assert not fresh.parent.exists()  # nothing before the first line: a server that fails to start leaves none
    log.start([{"model": "m", "role": "stable"}], None)
    log.close()
    assert json.loads(fresh.read_text(encoding="utf-8"))["event"] == "start"
    RequestLog(fresh)  # its own log: appending is fine


def test_serve_cli_refuses_bad_canary_options():
    from typer.testing import CliRunner

    from sftkit.cli import app

    r = CliRunner().invoke(app, ["serve", "runs/v2", "--canary-of", "runs/v1", "--share", "10"])
    assert r.exit_code == 2 and "--share 10.0" in r.output
    r = CliRunner().invoke(app, ["serve", "runs/v2", "--canary-of", "runs/v1", "--engine", "vllm"])
    assert r.exit_code == 2 and "--canary-of needs --engine transformers" in r.output


@pytest.mark.slow  # two models load in a subprocess: ~30 s
def test_sft_serve_canary_end_to_end(tiny_model_dir, tmp_path):
    for name in ("v1", "v2"):
        shutil.copytree(tiny_model_dir, tmp_path / name)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "SFTKIT_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "sftkit.cli", "serve", "v2", "--canary-of", "v1", "--share",
                             "0.5", "--port", str(port), "--max-batch", "4"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        root = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(root + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=root + "/v1", api_key=KEY, max_retries=0, timeout=60)
        got = [client.chat.completions.create(model="v1", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=2, user=f"e{i}").model for i in range(20)]
        assert got == ["v2" if bucket(f"e{i}") < 0.5 else "v1" for i in range(20)]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "canary: v2 answers 50% of the users of v1" in out and "both models are in memory" in out
    log = tmp_path / "serve_logs" / "requests.jsonl"  # the default, in the folder sft serve ran in
    rows = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["event"] == "start" and sum(r["event"] == "request" for r in rows) == 20
