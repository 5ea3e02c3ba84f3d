"""``sft data synth``: a teacher drafts grounded Q&A pairs per chunk, over real HTTP.

Three teachers, no mocks: a scripted OpenAI-compatible server (stdlib http.server, real sockets,
the real client) whose replies are known, so the grounding check and the rejects can be asserted
exactly; sftkit's own ``sft serve`` app over the tiny random model (the whole HTTP path, random
text); and the bundled model through the Engine (integration)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import sftkit
from sftkit.core.errors import DataError
from sftkit.data.draft import check_pair, parse_pairs
from sftkit.data.synth import load_chunks, synth
from wfcli import run_data

CHUNKS = [
    {"id": "hy#p1-c1", "doc": "docs/hy.txt", "page": 1,
     "text": "恒远新能源2023年实现营业收入128.64亿元，同比增长23.5%；研发人员1,286人。"},
    {"id": "hy#p2-c1", "doc": "docs/hy.txt", "page": 2,
     "text": "储能系统业务实现收入31.55亿元，同比增长41.8%，是增长最快的业务板块。"},
    {"id": "hy#p3-c1", "doc": "docs/hy.txt", "page": 3,
     "text": "四、风险因素\n原材料价格波动风险：碳酸锂价格大幅波动，可能影响毛利率。"},
]
A = ("好的，以下是问答：\n```json\n" + json.dumps({"pairs": [
    {"question": "恒远新能源2023年营业收入是多少？", "answer": "2023年营业收入为128.64亿元，同比增长23.5%。"},
    {"question": "恒远新能源2023年净利润是多少？", "answer": "净利润为9.87亿元。"},
    {"question": "恒远新能源有多少研发人员？", "answer": "研发人员1286人。"},
]}, ensure_ascii=False) + "\n```")
B = ('<think>先读资料。</think>[{"question": "储能系统业务2023年收入多少？", '
     '"answer": "储能系统业务实现收入31.55亿元，同比增长41.8%。"}, '
     '{"question": "储能业务前景如何？", "answer": "我认为未来十年将持续高速发展并成为全球领先企业"}, '
     '{"question": "储能系统业务增速如何？", "answer": "同比增长41.8%，是增长最')  # cut off at max tokens
C = "抱歉，我无法完成这个任务。"
SCRIPT = {"128.64": A, "31.55": B, "碳酸锂": C}


class Teacher:
    """A scripted OpenAI-compatible server: the reply is chosen by a figure in the chunk."""

    def __init__(self, fail: str | None = None, key: str | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail, self.key = fail, key
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, obj: Any) -> None:
                body = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if owner.key and self.headers.get("Authorization") != f"Bearer {owner.key}":
                    self._send(401, {"error": {"message": "bad key"}})
                    return False
                return True

            def do_GET(self) -> None:
                if self._authorised():
                    self._send(200, {"object": "list", "data": [{"id": "scripted-teacher", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorised():
                    return
                owner.requests.append(body)
                user = body["messages"][-1]["content"]
                if owner.fail and owner.fail in user:
                    self._send(400, {"error": {"message": "scripted failure"}})
                    return
                reply = next(r for key, r in SCRIPT.items() if key in user)
                self._send(200, {"object": "chat.completion", "model": body["model"], "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Teacher:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chunks_file(tmp_path) -> Path:
    p = tmp_path / "chunks.jsonl"
    p.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CHUNKS), encoding="utf-8")
    return p


def _lines(p: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


def test_grounded_pairs_kept_others_rejected_with_reason(tmp_path, chunks_file):
    from sftkit.infer.teacher import make_teacher

    out, rej = tmp_path / "pairs.jsonl", tmp_path / "rejects.jsonl"
    with Teacher(key="sk-scripted") as server:
        teacher = make_teacher(server.url, api_key="sk-scripted")
        res = synth(load_chunks(chunks_file), teacher, out, rej, pairs=3, batch=2)
    rows = _lines(out)
    assert [r["id"] for r in rows] == ["hy#p1-c1#q1", "hy#p1-c1#q3", "hy#p2-c1#q1"]
    assert rows[0]["messages"] == [{"role": "user", "content": "恒远新能源2023年营业收入是多少？"},
                                   {"role": "assistant", "content": "2023年营业收入为128.64亿元，同比增长23.5%。"}]
    assert rows[2]["meta"] == {"chunk": "hy#p2-c1", "doc": "docs/hy.txt", "page": 2,
                               "teacher": f"{server.url}#scripted-teacher"}
    reasons = {(r["chunk"], r.get("question")): r["reason"] for r in _lines(rej)}
    assert reasons[("hy#p1-c1", "恒远新能源2023年净利润是多少？")] == "answer figure(s) not in the chunk: 9.87"
    assert reasons[("hy#p2-c1", "储能业务前景如何？")].startswith("answer wording not from the chunk")
    assert reasons[("hy#p3-c1", None)] == "the reply holds no JSON list of question/answer pairs"
    assert (res.chunks, res.drafted, res.pairs, res.rejected) == (3, 2, 3, 3)
    assert res.empty == [{"chunk": "hy#p3-c1", "reason": "the reply holds no JSON list of question/answer pairs"}]
    first = server.requests[0]
    assert first["temperature"] == 0 and first["model"] == "scripted-teacher"
    assert first["messages"][0]["role"] == "system" and "3 个" in first["messages"][1]["content"]
    assert CHUNKS[0]["text"] in first["messages"][1]["content"]


def test_cli_deterministic_resumable_and_keyed_by_env(tmp_path, chunks_file):
    env = {"TEACHER_KEY": "sk-cli"}
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    bad = run_data("synth", chunks_file, "--out", full, "--lang", "fr")  # refused before any model loads
    assert bad.code == 2 and "--lang 'fr'" in bad.err and not full.exists()
    with Teacher(key="sk-cli") as server:
        r = run_data("synth", chunks_file, "--teacher", server.url, "--api-key-env", "TEACHER_KEY",
                     "--out", full, "--batch", "1", "--json", env=env)
        assert r.code == 1, r.err  # one chunk without any kept pair: a problem to look at
        assert r.json["pairs"] == 3 and r.json["empty"][0]["chunk"] == "hy#p3-c1"
        run_data("synth", chunks_file, "--teacher", server.url, "--api-key-env", "TEACHER_KEY",
                         "--out", tmp_path / "again.jsonl", "--batch", "1", env=env)
        assert (tmp_path / "again.jsonl").read_bytes() == full.read_bytes()  # temperature 0: the same drafts
        refused = run_data("synth", chunks_file, "--teacher", server.url, "--out", full, env=env)
        assert refused.code == 2 and "already exists" in refused.err
        nokey = run_data("synth", chunks_file, "--teacher", server.url, "--out", tmp_path / "k.jsonl")
        assert nokey.code == 2 and "API key was refused" in nokey.err
    with Teacher(fail="31.55", key="sk-cli") as broken:  # the teacher fails on the second chunk
        r = run_data("synth", chunks_file, "--teacher", broken.url, "--api-key-env", "TEACHER_KEY",
                     "--out", part, "--batch", "1", env=env)
        assert r.code == 2 and "HTTP 400" in r.err
    assert [x["meta"]["chunk"] for x in _lines(part)] == ["hy#p1-c1", "hy#p1-c1"]  # the first batch was kept
    with Teacher(key="sk-cli") as server:
        r = run_data("synth", chunks_file, "--teacher", server.url, "--api-key-env", "TEACHER_KEY",
                     "--out", part, "--batch", "1", "--resume", "--json", env=env)
        assert r.json["resumed"] == 1
        asked = [next(k for k in SCRIPT if k in q["messages"][-1]["content"]) for q in server.requests]
        assert asked == ["31.55", "碳酸锂"]  # only the chunks not done before
    def portless(p: Path) -> str:  # the teacher's name holds its URL, whose port differs between servers
        return re.sub(r"127\.0\.0\.1:\d+", "HOST", p.read_text(encoding="utf-8"))

    assert portless(part) == portless(full)
    assert portless(tmp_path / "part.rejects.jsonl") == portless(tmp_path / "full.rejects.jsonl")


def test_resume_refuses_output_of_other_chunks(tmp_path, chunks_file):
    out = tmp_path / "pairs.jsonl"
    out.write_text(json.dumps({"id": "x#q1", "messages": [], "meta": {"chunk": "other#p1-c1"}}) + "\n")
    with pytest.raises(DataError, match="not in this chunks file"):
        synth(load_chunks(chunks_file), lambda chats: [], out, tmp_path / "r.jsonl", resume=True)


def test_parse_pairs_variants():
    assert parse_pairs('[{"q": "问", "a": "答"}]') == ([{"question": "问", "answer": "答"}], None)
    assert parse_pairs('{"问题": "问", "答案": "答"}')[0] == [{"question": "问", "answer": "答"}]
    pairs, err = parse_pairs(B)
    assert err is None and [p["question"] for p in pairs] == ["储能系统业务2023年收入多少？", "储能业务前景如何？"]
    assert parse_pairs("[]") == ([], "the reply's JSON list is empty")
    assert parse_pairs('["不是对象"]')[0][0]["raw"] == '"不是对象"'


def test_check_pair_rules():
    chunk = CHUNKS[0]["text"]
    ok = {"question": "恒远新能源2023年研发人员有多少？", "answer": "研发人员1,286人。"}
    assert check_pair(ok, chunk, 0.3) is None
    assert check_pair({"question": "2024年收入？", "answer": "营业收入128.64亿元"}, chunk, 0.3) == (
        "question figure(s) not in the chunk: 2024")
    assert check_pair({"question": "净利润？", "answer": "资料中未提及。"}, chunk, 0.3) == (
        "the answer says the text does not tell")
    assert check_pair({"question": "", "answer": "x"}, chunk, 0.3) == "empty question or answer"


@pytest.fixture(scope="module")
def live(tiny_model_dir) -> Iterator[Any]:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from servelib import LiveServer, tiny_engine
    from sftkit.infer.server import create_app

    app = create_app(tiny_engine(tiny_model_dir, 2048), "tiny", api_key="sk-serve", max_batch=4, batch_wait_s=0.01)
    with LiveServer(app) as srv:
        yield srv


def test_sft_serve_as_teacher_every_chunk_accounted(tmp_path, chunks_file, live):
    from sftkit.infer.teacher import HttpTeacher

    outs = []
    for run in ("a", "b"):
        out, rej = tmp_path / f"{run}.jsonl", tmp_path / f"{run}.rejects.jsonl"
        teacher = HttpTeacher(live.url, api_key="sk-serve", max_new_tokens=24)
        res = synth(load_chunks(chunks_file), teacher, out, rej, pairs=2)
        assert teacher.model == "tiny"
        outs.append((out.read_bytes(), rej.read_bytes()))
        done = {r["meta"]["chunk"] for r in _lines(out)} | {r["chunk"] for r in _lines(rej)}
        assert done == {c["id"] for c in CHUNKS}  # every chunk drafted or reported
        assert res.drafted + len(res.empty) == len(CHUNKS)
        assert all(r.get("reply") is not None or r.get("question") is not None for r in _lines(rej))
    assert outs[0] == outs[1]  # greedy through the real server: the same drafts twice


@pytest.mark.integration
def test_bundled_model_as_teacher(tmp_path):
    from sftkit.data.extract import extract
    from sftkit.infer.teacher import make_teacher

    docs = Path(sftkit.__file__).resolve().parent / "examples" / "annual_report" / "docs"
    chunks = extract([docs / "hengyuan_energy_2023.txt"], size=60, overlap=0).chunks[:2]  # short: CPU prefill
    teacher = make_teacher("smollm2-135m-instruct", max_new_tokens=48)
    out, rej = tmp_path / "pairs.jsonl", tmp_path / "rejects.jsonl"
    res = synth(chunks, teacher, out, rej, pairs=2)
    done = {r["meta"]["chunk"] for r in _lines(out)} | {r["chunk"] for r in _lines(rej)}
    assert done == {c["id"] for c in chunks}
    assert res.drafted + len(res.empty) == len(chunks)
    by_id = {c["id"]: c["text"] for c in chunks}
    for row in _lines(out):  # whatever the small model kept passed the grounding check
        pair = {"question": row["messages"][0]["content"], "answer": row["messages"][1]["content"]}
        assert check_pair(pair, by_id[row["meta"]["chunk"]], 0.3) is None
