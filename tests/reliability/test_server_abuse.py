"""The server under load and abuse: a real uvicorn server, the real openai client and
raw httpx, the tiny model. 200 requests from 16 concurrent clients all correct; 50+
malformed or hostile requests each a 4xx with an OpenAI-style error and the server
healthy after; a client leaving mid-stream frees its slot for a waiting request."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from servelib import LiveServer, tiny_engine  # noqa: E402
from sftkit.core.conversation import Conversation  # noqa: E402
from sftkit.infer.engine import GenParams  # noqa: E402
from sftkit.infer.server import create_app  # noqa: E402
from trainlib import wait_for  # noqa: E402

KEY = "sk-reliability"
CONTEXT = 256
LIMIT = 200
BODY_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return tiny_engine(tiny_model_dir, CONTEXT)


@pytest.fixture(scope="module")
def live(engine) -> Iterator[LiveServer]:
    app = create_app(engine, "tiny", api_key=KEY, max_tokens_limit=LIMIT, max_batch=16, batch_wait_s=0.01,
                     max_body_bytes=BODY_LIMIT)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url, api_key=KEY, max_retries=0, timeout=120)


def _direct(live: LiveServer, prompt: str, max_new: int) -> str:
    """The engine's own greedy answer, computed alone on the server's worker thread."""
    (r,) = live.app.state.server.batcher.generate([prompt], GenParams(max_new_tokens=max_new), timeout=120)
    return r.text


def _chat_prompt(engine, text: str) -> str:
    return engine.prompt_for(Conversation.from_messages([{"role": "user", "content": text}]))


# -- load -------------------------------------------------------------------------------


def _one(client, job: tuple[str, str, int]) -> str:
    kind, text, n = job
    if kind == "completion":
        return client.completions.create(model="tiny", prompt=text, max_tokens=n, temperature=0).choices[0].text
    msgs = [{"role": "user", "content": text}]
    if kind == "stream":
        chunks = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=n, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return client.chat.completions.create(model="tiny", messages=msgs, max_tokens=n, temperature=0
                                          ).choices[0].message.content


@pytest.mark.slow
def test_200_requests_from_16_clients_all_correct(client, engine, live):
    rng = random.Random(7)
    texts = [f"问题 {i}: {'为什么 ' * (i % 4)}天空是蓝色的？" if i % 2 else f"Question {i}: {'why ' * (i % 5)}?"
             for i in range(10)]
    jobs = [(rng.choice(["chat", "chat", "chat", "stream", "completion"]), rng.choice(texts), rng.choice([3, 6]))
            for _ in range(200)]
    direct = {}  # (prompt, max_tokens) -> answer; chat and stream share their prompt
    for kind, text, n in set(jobs):
        prompt = text if kind == "completion" else _chat_prompt(engine, text)
        if (prompt, n) not in direct:
            direct[prompt, n] = _direct(live, prompt, n)
    want = {(k, t, n): direct[t if k == "completion" else _chat_prompt(engine, t), n] for k, t, n in set(jobs)}
    assert len(set(want.values())) > 10, "answers must depend on the prompt for this test to mean anything"
    before = live.health()
    errors: list[BaseException] = []

    def run(job):
        try:
            return _one(client, job)
        except Exception as e:  # noqa: BLE001 - counted: the promise is zero errors
            errors.append(e)
            return None

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(run, jobs))
    assert errors == []
    wrong = [(j, g, want[j]) for j, g in zip(jobs, got, strict=True) if g != want[j]]
    assert wrong == []
    after = live.health()
    assert after["status"] == "ok" and after["errors"] == before["errors"]
    batched = after["batched_prompts"] - before["batched_prompts"]
    assert after["batches"] - before["batches"] < batched, "concurrent requests should share forward passes"


# -- abuse ------------------------------------------------------------------------------

CHAT, COMPL = "/chat/completions", "/completions"
OK_MSG = [{"role": "user", "content": "hi"}]


def chat(**kw) -> bytes:
    return json.dumps({"model": "tiny", "messages": OK_MSG, "max_tokens": 4, **kw}).encode()


def nested(depth: int) -> bytes:
    return b'{"model": "tiny", "messages": ' + b"[" * depth + b"]" * depth + b"}"


def _huge_chunks() -> Iterator[bytes]:  # a chunked upload: no Content-Length to refuse it by
    yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
    for _ in range(64):
        yield b"x" * 16384
    yield b'"}]}'


HOSTILE: list[tuple[str, str, str, object, dict | None, int]] = [
    # (name, method, path, body, headers (None: a good key), expected status)
    ("bad json", "POST", CHAT, b"{not json", None, 400),
    ("truncated json", "POST", CHAT, b'{"model": "tiny", "messages": [', None, 400),
    ("array body", "POST", CHAT, b"[]", None, 400),
    ("string body", "POST", CHAT, b'"hello"', None, 400),
    ("null body", "POST", CHAT, b"null", None, 400),
    ("empty body", "POST", CHAT, b"", None, 400),
    ("invalid utf-8", "POST", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     None, 400),
    ("100k nested arrays", "POST", CHAT, nested(100_000), None, 400),
    ("NaN temperature", "POST", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], '
                                      b'"temperature": NaN}', None, 400),
    ("missing model", "POST", CHAT, json.dumps({"messages": OK_MSG}).encode(), None, 400),
    ("missing messages", "POST", CHAT, json.dumps({"model": "tiny"}).encode(), None, 400),
    ("messages string", "POST", CHAT, chat(messages="hi"), None, 400),
    ("messages empty", "POST", CHAT, chat(messages=[]), None, 400),
    ("messages ints", "POST", CHAT, chat(messages=[1, 2]), None, 400),
    ("message without role", "POST", CHAT, chat(messages=[{"content": "hi"}]), None, 400),
    ("unknown role", "POST", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), None, 400),
    ("content number", "POST", CHAT, chat(messages=[{"role": "user", "content": 5}]), None, 400),
    ("content object", "POST", CHAT, chat(messages=[{"role": "user", "content": {"a": 1}}]), None, 400),
    ("image content", "POST", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), None, 400),
    ("name object", "POST", CHAT, chat(messages=[{"role": "user", "content": "hi", "name": {"x": 1}}]), None, 400),
    ("model number", "POST", CHAT, chat(model=5), None, 400),
    ("unknown model", "POST", CHAT, chat(model="gpt-9"), None, 404),
    ("temperature string", "POST", CHAT, chat(temperature="hot"), None, 400),
    ("negative temperature", "POST", CHAT, chat(temperature=-0.5), None, 400),
    ("temperature 5", "POST", CHAT, chat(temperature=5), None, 400),
    ("top_p 0", "POST", CHAT, chat(top_p=0), None, 400),
    ("top_p 1.5", "POST", CHAT, chat(top_p=1.5), None, 400),
    ("max_tokens 0", "POST", CHAT, chat(max_tokens=0), None, 400),
    ("max_tokens -1", "POST", CHAT, chat(max_tokens=-1), None, 400),
    ("max_tokens 10^30", "POST", CHAT, chat(max_tokens=10**30), None, 400),
    ("max_tokens float", "POST", CHAT, chat(max_tokens=2.5), None, 400),
    ("max_tokens true", "POST", CHAT, chat(max_tokens=True), None, 400),
    ("max_tokens string", "POST", CHAT, chat(max_tokens="10"), None, 400),
    ("max_tokens infinity", "POST", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], '
                                          b'"max_tokens": 1e309}', None, 400),
    ("huge max_tokens", "POST", CHAT, chat(max_tokens=100_000), None, 400),
    ("n 0", "POST", CHAT, chat(n=0), None, 400),
    ("n 1000", "POST", CHAT, chat(n=1000), None, 400),
    ("n string", "POST", CHAT, chat(n="2"), None, 400),
    ("stream string", "POST", CHAT, chat(stream="yes"), None, 400),
    ("stream with n=2", "POST", CHAT, chat(stream=True, n=2), None, 400),
    ("5 stop sequences", "POST", CHAT, chat(stop=["a", "b", "c", "d", "e"]), None, 400),
    ("empty stop", "POST", CHAT, chat(stop=[""]), None, 400),
    ("stop int", "POST", CHAT, chat(stop=5), None, 400),
    ("seed 2^70", "POST", CHAT, chat(seed=2**70, temperature=1), None, 400),
    ("seed string", "POST", CHAT, chat(seed="x"), None, 400),
    ("logprobs", "POST", CHAT, chat(logprobs=True), None, 400),
    ("tools not a list", "POST", CHAT, chat(tools="x"), None, 400),
    ("prompt longer than context", "POST", CHAT,
     chat(messages=[{"role": "user", "content": "word " * (CONTEXT + 50)}]), None, 400),
    ("prompt + max_tokens over context", "POST", CHAT,
     chat(messages=[{"role": "user", "content": "word " * (CONTEXT - 60)}], max_tokens=LIMIT), None, 400),
    ("lone surrogate", "POST", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "a \\ud800"}]}',
     None, 400),
    ("5 MB body", "POST", CHAT, chat(messages=[{"role": "user", "content": "x" * 5_000_000}]), None, 413),
    ("1 MB chunked body", "POST", CHAT, _huge_chunks, None, 413),
    ("no API key", "POST", CHAT, chat(), {}, 401),
    ("wrong API key", "POST", CHAT, chat(), {"Authorization": "Bearer sk-wrong"}, 401),
    ("basic auth", "POST", CHAT, chat(), {"Authorization": f"Basic {KEY}"}, 401),
    ("key as query", "GET", "/models?api_key=" + KEY, None, {}, 401),
    ("GET a POST route", "GET", CHAT, None, None, 405),
    ("unknown route", "GET", "/nope", None, None, 404),
    ("unknown model card", "GET", "/models/gpt-9", None, None, 404),
    ("token-id prompt", "POST", COMPL, json.dumps({"model": "tiny", "prompt": [1, 2, 3]}).encode(), None, 400),
    ("empty prompt list", "POST", COMPL, json.dumps({"model": "tiny", "prompt": []}).encode(), None, 400),
    ("suffix", "POST", COMPL, json.dumps({"model": "tiny", "prompt": "a", "suffix": "b"}).encode(), None, 400),
    ("echo string", "POST", COMPL, json.dumps({"model": "tiny", "prompt": "a", "echo": "yes"}).encode(), None, 400),
    ("stream two prompts", "POST", COMPL,
     json.dumps({"model": "tiny", "prompt": ["a", "b"], "stream": True}).encode(), None, 400),
    ("completion surrogate", "POST", COMPL, b'{"model": "tiny", "prompt": "\\udfff", "max_tokens": 2}', None, 400),
]


def _send(live: LiveServer, method: str, path: str, body: object, headers: dict | None) -> httpx.Response:
    h = {"Authorization": f"Bearer {KEY}"} if headers is None else dict(headers)
    if body is not None:
        h["Content-Type"] = "application/json"
    content = body() if callable(body) else body
    return httpx.request(method, live.url + path, content=content, headers=h, timeout=60)


def test_hostile_requests_get_openai_errors_and_the_server_stays_healthy(live, client, engine):
    assert len(HOSTILE) >= 50
    before = live.health()
    for name, method, path, body, headers, status in HOSTILE:
        r = _send(live, method, path, body, headers)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (name, err)
    after = live.health()
    assert after["status"] == "ok" and after["errors"] == before["errors"]  # none reached the model as a failure
    text = "still correct after the abuse?"
    got = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": text}], max_tokens=6,
                                         temperature=0).choices[0].message.content
    assert got == _direct(live, _chat_prompt(engine, text), 6)


def test_a_bad_request_in_a_shared_batch_fails_alone(live, engine):
    """A request that makes generation fail inside a batch (here: a prompt the tokenizer
    refuses, sent straight to the batcher past the HTTP checks) fails alone; the requests
    batched with it still get their answers."""
    batcher = live.app.state.server.batcher
    good = [_chat_prompt(engine, f"batch mate {i}") for i in range(3)]
    want = [_direct(live, p, 4) for p in good]
    p = GenParams(max_new_tokens=4)
    futures = [batcher.submit([g], p) for g in good[:2]] + [batcher.submit(["bad \ud800"], p)] + \
              [batcher.submit([good[2]], p)]
    results = [f.exception(timeout=120) or f.result()[0].text for f in futures]
    assert results[:2] + results[3:] == want
    assert isinstance(results[2], Exception)


# -- disconnects --------------------------------------------------------------------------


def test_client_leaving_mid_stream_frees_its_slot(engine):
    """Two stream slots, both taken; a third stream waits. Both clients leave mid-stream:
    their slots are freed and the waiting request is served."""
    app = create_app(engine, "tiny", api_key=KEY, max_tokens_limit=LIMIT, max_batch=2)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go on forever"}], "max_tokens": LIMIT,
            "temperature": 0, "stream": True}
    h = {"Authorization": f"Bearer {KEY}"}
    with LiveServer(app) as live:
        batcher = app.state.server.batcher
        opened = []
        for _ in range(2):
            cm = httpx.stream("POST", live.url + CHAT, headers=h, json=body, timeout=60)
            resp = cm.__enter__()
            lines = resp.iter_lines()  # kept referenced: a collected line iterator closes the connection
            for line in lines:  # until the first generated text: the stream holds a slot
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
            opened.append((cm, lines))
        assert batcher.load()["active_streams"] == 2
        third: dict = {}

        def wait_in_line():
            with httpx.stream("POST", live.url + CHAT, headers=h, json={**body, "max_tokens": 5}, timeout=120) as r:
                third["lines"] = [ln for ln in r.iter_lines() if ln]

        t = threading.Thread(target=wait_in_line)
        t.start()
        wait_for(lambda: batcher.load()["waiting_streams"] == 1, 30, "the third stream to queue for a slot")
        for cm, _ in opened:  # the two clients go away mid-stream
            cm.__exit__(None, None, None)
        t.join(120)
        assert third.get("lines", [""])[-1] == "data: [DONE]"  # served once a slot was free
        wait_for(lambda: batcher.load() == {"queued_requests": 0, "waiting_streams": 0, "active_streams": 0},
                 30, "every slot to be free")
        assert batcher.stats["cancelled_streams"] == 2
        assert live.health()["status"] == "ok"
