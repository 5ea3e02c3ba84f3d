"""The server's guard rails: a real uvicorn server, raw httpx and the real openai client,
the tiny model, and the real ``sft serve`` command as a subprocess.

- CPU work (parsing, rendering, tokenising) runs off the event loop: ``/health`` answers
  quickly while 4 MB prompts are being tokenised, and text longer than the model could
  take is refused by its length in characters before it reaches the tokenizer.
- Every shape of chat message and tool is validated: a hostile value in any field is a
  4xx naming the field, never a 500.
- With an API key, only ``/health`` is open, and it does not name the model.
- ``sft serve`` refuses to listen beyond loopback without a key unless told
  ``--insecure-no-auth``, and then says so with the URL.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from servelib import LiveServer, free_port, tiny_engine  # noqa: E402
from sftkit.infer.server import create_app  # noqa: E402
from trainlib import wait_for  # noqa: E402

KEY = "sk-guard"
AUTH = {"Authorization": f"Bearer {KEY}"}
BIG = "word " * 800_000  # 4 MB of text: ~800k tokens, seconds of tokenising on this CPU
# Measured here (2 cores, load average 10): before the fix /health waited 5-9 s behind one big
# prompt and 9-17 s behind four; after it, at most 0.06 s and 0.16 s (the tokenizer's Rust core
# releases the GIL; building its Python lists does not).
HEALTH_BOUND_S = 1.0


# -- the event loop stays free ----------------------------------------------------------


@pytest.fixture(scope="module")
def long_context(tiny_model_dir) -> Iterator[LiveServer]:
    """A context long enough (600k tokens) that a 4 MB prompt passes the character check and
    is tokenised; at ~800k tokens it is then refused as too long, so nothing generates."""
    app = create_app(tiny_engine(tiny_model_dir, 600_000), "tiny", api_key=KEY, max_body_bytes=8 * 2**20)
    with LiveServer(app) as srv:
        yield srv


def _health_while(live: LiveServer, n_big: int) -> tuple[list[float], list[httpx.Response]]:
    """Send ``n_big`` 4 MB prompts at once and time ``/health`` until they are all answered."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": BIG}], "max_tokens": 1})
    answers: list[httpx.Response] = []

    def big() -> None:
        answers.append(httpx.post(live.url + "/chat/completions", content=body, timeout=300,
                                  headers={**AUTH, "Content-Type": "application/json"}))

    threads = [threading.Thread(target=big) for _ in range(n_big)]
    for t in threads:
        t.start()
    latencies = []
    with httpx.Client(timeout=60) as c:
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            assert c.get(live.root + "/health").status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.02)
    for t in threads:
        t.join()
    return latencies, answers


@pytest.mark.parametrize("n_big", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_health_answers_while_4mb_prompts_are_tokenised(long_context, n_big):
    latencies, answers = _health_while(long_context, n_big)
    assert [r.status_code for r in answers] == [400] * n_big
    assert {r.json()["error"]["code"] for r in answers} == {"context_length_exceeded"}
    assert max(latencies) < HEALTH_BOUND_S, f"/health blocked for {max(latencies):.2f}s: the event loop did CPU work"
    assert len(latencies) >= 3, "the big requests were answered before /health could be timed"


class _SeenTexts:
    """The real tokenizer, recording the length of every text it is asked to encode."""

    def __init__(self, tok: Any) -> None:
        self._tok, self.lengths = tok, []

    def __call__(self, text: Any, *a: Any, **kw: Any) -> Any:
        self.lengths += [len(t) for t in ([text] if isinstance(text, str) else text)]
        return self._tok(text, *a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def test_text_over_the_character_limit_is_refused_before_tokenising(tiny_model_dir):
    engine = tiny_engine(tiny_model_dir, 256)
    seen = engine.tokenizer = _SeenTexts(engine.tokenizer)
    app = create_app(engine, "tiny", api_key=KEY, max_body_bytes=8 * 2**20)
    with LiveServer(app) as live:
        client = openai.OpenAI(base_url=live.url, api_key=KEY, max_retries=0, timeout=120)
        for big in ("x" * (8 * 256 + 1), BIG):  # just over 8 characters per token of context, and 4 MB
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": big}])
            assert max(seen.lengths, default=0) <= 8 * 256, "an over-long text reached the tokenizer"
            assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "messages"
            with pytest.raises(openai.BadRequestError) as e:
                client.completions.create(model="tiny", prompt=["ok", big])
            assert max(seen.lengths, default=0) <= 8 * 256, "an over-long text reached the tokenizer"
            assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt[1]"
        assert client.completions.create(model="tiny", prompt="still fine", max_tokens=2).choices[0].text is not None
        assert seen.lengths, "the tokenizer was not observed at all"


# -- message and tool shapes --------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tiny_model_dir) -> Iterator[LiveServer]:
    app = create_app(tiny_engine(tiny_model_dir, 256), "tiny", api_key=KEY, max_tokens_limit=8)
    with LiveServer(app) as srv:
        yield srv


def _post(live: LiveServer, body: Any, client: Any = httpx) -> httpx.Response:
    return client.post(live.url + "/chat/completions", content=json.dumps(body), timeout=60,
                       headers={**AUTH, "Content-Type": "application/json"})


def _assert_openai_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    return err


@pytest.mark.parametrize("function", [5, "get_weather", ["get_weather"], None, {"arguments": "{}"}])
def test_malformed_tool_call_is_a_400_naming_the_field(live, function):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": function}]}]
    err = _assert_openai_error(_post(live, {"model": "tiny", "messages": msgs}))
    want = "messages[1].tool_calls[0].function" + (".name" if isinstance(function, dict) else "")
    assert err["param"] == want and err["message"].startswith(want + ": "), err


@pytest.mark.parametrize(("call", "param"), [
    ("get_weather", "messages[1].tool_calls[0]"),
    ({"type": "retrieval", "function": {"name": "f", "arguments": "{}"}}, "messages[1].tool_calls[0].type"),
    ({"function": {"name": "f", "arguments": "{not json"}}, "messages[1].tool_calls[0].function.arguments"),
    ({"function": {"name": "f", "arguments": "[1, 2]"}}, "messages[1].tool_calls[0].function.arguments"),
    ({"function": {"name": "f", "arguments": 5}}, "messages[1].tool_calls[0].function.arguments"),
])
def test_tool_call_fields_are_checked(live, call, param):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}]
    assert _assert_openai_error(_post(live, {"model": "tiny", "messages": msgs}))["param"] == param


GOOD: dict[str, Any] = {
    "model": "tiny", "max_tokens": 1, "temperature": 0,
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}], "name": "ann"},
        {"role": "assistant", "content": None, "reasoning_content": "look it up",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "user", "content": "and tomorrow?"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "weather", "description": "the weather", "strict": False,
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}],
}
GARBAGE: list[Any] = [5, -1, 2.5, True, None, "", "x", "\ud800", [], [1], ["x"], [None], {},
                      {"a": {"b": [None, {"c": []}]}}, json.loads("[" * 60 + "]" * 60)]


def _paths(node: Any, at: tuple = ()) -> Iterator[tuple]:
    """Every field and item of a body, the containers themselves too."""
    if at:
        yield at
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, (*at, k))


def _replaced(base: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    node = body
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return body


def _names(param: str | None, path: tuple) -> bool:
    """Whether an error's ``param`` points at the changed field, inside it or at what holds it."""
    at = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")
    return param is not None and (param.startswith(at) or at.startswith(param))


def test_no_hostile_message_or_tool_shape_gives_a_500(live):
    """A garbage value (numbers, strings, a lone surrogate, lists, nulls, nested junk) in every
    field of every chat message, tool call, content part and tool (and of the request): each
    request is a 4xx in OpenAI's shape. The body asks for logprobs, which this server refuses
    only after the messages are validated, rendered and tokenised: so a value that happens to
    be valid is carried through everything a message shape can break, and still ends in a 4xx
    (but for ``logprobs: null`` itself, which is answered)."""
    assert _post(live, GOOD).status_code == 200
    probe = {**GOOD, "top_p": 1, "n": 1, "stop": ["\n\n"], "seed": 1, "stream": False, "max_completion_tokens": 1,
             "stream_options": {"include_usage": False}, "logprobs": True}
    assert _assert_openai_error(_post(live, probe))["param"] == "logprobs"
    paths = list(_paths(probe))
    assert len(paths) > 50
    bad, refused = [], 0
    with httpx.Client() as client:
        replies = [(path, value, _post(live, _replaced(probe, path, value), client))
                   for path in paths for value in GARBAGE]
    for path, value, r in replies:
        if path == ("logprobs",) and value is None and r.status_code == 200:
            continue
        err = r.json().get("error") if r.headers.get("content-type") == "application/json" else None
        if not 400 <= r.status_code < 500 or not err or set(err) != {"message", "type", "param", "code"}:
            bad.append((path, value, r.status_code, r.text[:200]))
        elif err["param"] != "logprobs":
            refused += 1
            if not _names(err["param"], path):
                bad.append((path, value, "names", err["param"]))
    assert bad == []
    assert refused > len(paths) * len(GARBAGE) // 2
    assert live.health()["status"] == "ok"


def test_openai_client_tool_history_is_served(live):
    """What a real client sends back after a tool call (arguments as a JSON string, a tool reply,
    the tool list) is accepted; the rendered prompt carries the call."""
    client = openai.OpenAI(base_url=live.url, api_key=KEY, max_retries=0, timeout=60)
    r = client.chat.completions.create(model="tiny", messages=GOOD["messages"], tools=GOOD["tools"], max_tokens=2,
                                       temperature=0)
    assert r.choices[0].message.content is not None and r.usage.prompt_tokens > 20


# -- what is open without the key ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/v1/models"])
def test_with_a_key_only_health_is_open(live, path):
    r = httpx.get(live.root + path, timeout=10)
    assert _assert_openai_error(r, 401)["code"] == "invalid_api_key"
    assert httpx.get(live.root + path, headers=AUTH, timeout=10).status_code == 200


def test_health_is_open_and_does_not_name_the_model(live):
    open_ = httpx.get(live.root + "/health", timeout=10)
    assert open_.status_code == 200 and open_.json()["status"] == "ok"
    assert "tiny" not in open_.text
    assert httpx.get(live.root + "/health", headers=AUTH, timeout=10).json()["model"] == "tiny"


def test_docs_describe_the_request_bodies(live):
    spec = httpx.get(live.root + "/openapi.json", headers=AUTH, timeout=10).json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatRequest"}
    schemas = spec["components"]["schemas"]
    assert "messages" in schemas["ChatRequest"]["properties"] and "ToolCall" in schemas


# -- the command line ---------------------------------------------------------------------

SFT = str(Path(sys.executable).with_name("sft"))


def _sft(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SFTKIT_API_KEY"}
    return subprocess.run([SFT, "serve", *args], check=False, capture_output=True, text=True, env=env, timeout=60,
                          **kw)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_cli_refuses_to_listen_beyond_loopback_without_a_key(tiny_model_dir, host):
    r = _sft(str(tiny_model_dir), "--host", host, "--port", str(free_port()))
    assert r.returncode == 2, r.stderr[-500:]
    msg = " ".join(r.stderr.split())
    assert "no API key" in msg and "--api-key" in msg and "--insecure-no-auth" in msg, msg
    assert "Traceback" not in r.stderr


def test_cli_with_a_key_passes_the_host_check(tmp_path):
    env = {**os.environ, "SFTKIT_API_KEY": "sk-from-env"}
    r = subprocess.run([SFT, "serve", str(tmp_path / "missing"), "--host", "0.0.0.0"], check=False,
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "insecure" not in r.stderr and "missing" in r.stderr, r.stderr[-500:]


def test_cli_insecure_no_auth_serves_and_warns_with_the_url(tiny_model_dir, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "SFTKIT_API_KEY"}
    with log.open("w") as out:
        proc = subprocess.Popen([SFT, "serve", str(tiny_model_dir), "--host", "0.0.0.0", "--port", str(port),
                                 "--insecure-no-auth"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path)  # its request log (serve_logs/) lands there
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"sft serve exited {proc.returncode}: {log.read_text()[-800:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 180, "sft serve to answer /health")
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 200  # no key needed
        text = " ".join(log.read_text().split())
        assert f"http://0.0.0.0:{port}/v1" in text and "no API key" in text and "warning" in text.lower(), text
    finally:
        proc.terminate()
        proc.wait(30)
