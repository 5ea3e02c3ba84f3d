"""``sft serve``: a real uvicorn server on a free local port, the real ``openai``
client (and httpx for malformed bodies), the tiny model. No mocks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from servelib import LiveServer, tiny_engine  # noqa: E402
from sftkit.core.conversation import Conversation  # noqa: E402
from sftkit.infer.engine import Engine, GenParams  # noqa: E402

KEY = "sk-test-key"
CONTEXT = 256
LIMIT = 200


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return tiny_engine(tiny_model_dir, CONTEXT)


@pytest.fixture(scope="module")
def live(engine) -> Iterator[LiveServer]:
    from sftkit.infer.server import create_app

    app = create_app(engine, "tiny", api_key=KEY, max_tokens_limit=LIMIT, max_batch=16, batch_wait_s=0.02)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url, api_key=KEY, max_retries=0, timeout=60)


def expected(engine: Engine, live: LiveServer, user: str, max_new: int) -> str:
    """One request alone, through the server's own worker (the model is never used from two threads)."""
    prompt = engine.prompt_for(Conversation.from_messages([{"role": "user", "content": user}]))
    (r,) = live.app.state.server.batcher.generate([prompt], GenParams(max_new_tokens=max_new), timeout=60)
    return r.text


def chat(client, content: str, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                          temperature=0, **kw)


def test_chat_completion(client, engine, live):
    r = chat(client, "What is 2+2?", max_tokens=8)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected(engine, live, "What is 2+2?", 8)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream(client, live):
    full = chat(client, "Tell me a story", max_tokens=12).choices[0].message.content
    stream = chat(client, "Tell me a story", max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12
    # The raw wire format ends with OpenAI's sentinel.
    with httpx.stream("POST", live.url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                            "temperature": 0, "stream": True}, timeout=60) as resp:
        lines = [ln for ln in resp.iter_lines() if ln]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_completion_and_models(client, engine, live):
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    (want,) = live.app.state.server.batcher.generate(["Once upon a time"], GenParams(max_new_tokens=6), timeout=60)
    assert r.object == "text_completion" and r.choices[0].text == want.text
    assert r.usage.completion_tokens == want.completion_tokens
    two = client.completions.create(model="tiny", prompt=["a", "b"], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_unauthorised(live):
    bad = openai.OpenAI(base_url=live.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(live.url + "/chat/completions", content=b"{not json", timeout=10)  # no key: 401 before parsing
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(live.root + "/health", timeout=10).status_code == 200  # health needs no key


MALFORMED = [
    b"{not json",
    b"[]",
    b'{"model": "tiny"}',
    b'{"model": "tiny", "messages": "hi"}',
    b'{"model": "tiny", "messages": []}',
    b'{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 1000}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": ["a","b","c","d","e"]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 2}',
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_bodies(live, body):
    r = httpx.post(live.url + "/chat/completions", content=body, timeout=10,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code in (400, 422), r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_unknown_model_and_route(live):
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(live.url + "/chat/completions", headers=h, timeout=10,
                   json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.get(live.url + "/nope", headers=h, timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_prompt_longer_than_context(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "word " * (CONTEXT + 50), max_tokens=4)
    assert e.value.status_code == 400
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):  # fits alone, not with the requested completion
        chat(client, "word " * (CONTEXT - 60), max_tokens=LIMIT)


def test_concurrent_requests_are_batched_and_equal_single(client, engine, live):
    users = [f"Question number {i}: {'why ' * (i % 5)}?" for i in range(16)]
    limits = [4 + i % 5 for i in range(16)]  # different max_tokens in one batch
    want = [expected(engine, live, u, n) for u, n in zip(users, limits, strict=True)]
    before = dict(live.health())
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda a: chat(client, a[0], max_tokens=a[1]).choices[0].message.content,
                            zip(users, limits, strict=True)))
    assert got == want
    assert len(set(want)) > 1, "answers must depend on the prompt for this test to mean anything"
    after = live.health()
    assert after["status"] == "ok"
    assert after["batched_prompts"] - before["batched_prompts"] == 16
    assert after["batches"] - before["batches"] < 16, "concurrent requests should share forward passes"
    assert chat(client, "still alive?", max_tokens=2).choices[0].message.content is not None


def test_concurrent_streams_share_forward_passes(client, engine, live):
    users = [f"Stream {i}: {'tell me ' * (i % 4)}more" for i in range(8)]
    want = [expected(engine, live, u, 6) for u in users]
    before = dict(live.health())

    def streamed(u: str) -> str:
        chunks = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": u}],
                                                temperature=0, max_tokens=6, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(streamed, users))
    assert got == want
    after = live.health()
    assert after["streams"] - before["streams"] == 8
    assert after["stream_batches"] - before["stream_batches"] < 8, "concurrent streams should be decoded together"
    assert after["active_streams"] == 0


def test_health_reports_tokens_per_second_and_queue(client, live):
    """/health after real requests: the engine's token counts equal the usage the clients were sent,
    the recent throughput is non-zero, the queue is empty again."""
    before = live.health()
    with ThreadPoolExecutor(4) as pool:
        usages = list(pool.map(lambda i: chat(client, f"count to {i}", max_tokens=5).usage, range(4)))
    streamed = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "stream"}],
                                              temperature=0, max_tokens=5, stream=True,
                                              stream_options={"include_usage": True})
    usages += [c.usage for c in streamed if c.usage is not None]
    after = live.health()
    assert after["completion_tokens_total"] - before["completion_tokens_total"] == sum(
        u.completion_tokens for u in usages)
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == sum(u.prompt_tokens for u in usages)
    assert after["prompts_total"] - before["prompts_total"] == 5
    assert after["tokens_per_s"] > 0 and after["decode_tokens_per_s"] > 0
    assert after["queue_length"] == 0 and after["oom_halvings"] == 0
    assert "device" not in after  # like the model's name: only for key holders
    keyed = httpx.get(live.root + "/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert keyed["device"].startswith("cpu")


def test_client_disconnect_mid_stream_frees_slot(client, live):
    before = live.health()["cancelled_streams"]
    with httpx.stream("POST", live.url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "messages": [{"role": "user", "content": "go on forever"}],
                            "max_tokens": LIMIT, "temperature": 0, "stream": True}, timeout=60) as resp:
        lines = resp.iter_lines()
        next(lines), next(lines)  # role chunk + first text: generation is under way
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        h = live.health()
        if h["active_streams"] == 0 and h["cancelled_streams"] > before:
            break
        time.sleep(0.05)
    assert h["active_streams"] == 0 and h["cancelled_streams"] == before + 1, str(h)
    assert chat(client, "hello again", max_tokens=3).choices[0].message.content is not None


def test_vllm_command_line(tmp_path, tiny_model_dir):
    from sftkit.infer.vllm_serve import vllm_command

    cmd = vllm_command(str(tiny_model_dir), "0.0.0.0", 9000, "k", 8)
    assert str(tiny_model_dir) in cmd and cmd[cmd.index("--port") + 1] == "9000"
    assert cmd[cmd.index("--api-key") + 1] == "k" and cmd[cmd.index("--max-num-seqs") + 1] == "8"


def test_serve_cli_vllm_missing_is_one_line():
    from typer.testing import CliRunner

    from sftkit.infer.vllm_serve import vllm_available

    if vllm_available():
        pytest.skip("vllm is installed here")
    from sftkit.cli import app

    r = CliRunner().invoke(app, ["serve", "whatever", "--engine", "vllm"])
    assert r.exit_code == 2
    assert "vllm is not installed" in r.output and "Traceback" not in r.output
