"""Rebuild this example's data from its documents, through the real ``sft data`` commands.

    python examples/annual_report/build_data.py

The chain a user runs on real filings (README.md shows it with a real teacher on a GPU):

1. ``sft data extract docs``            documents -> page-aware, cleaned chunks
2. ``sft data synth --teacher URL``     a teacher drafts grounded Q&A pairs per chunk; ungrounded drafts
                                         are rejected with the reason
3. ``sft data sample``                  a spot-check sheet (100 rows per thousand, the guide's 50-100)
4. ``sft data agree`` / ``review``      two reviewers' verdicts compared (Cohen's kappa), the adjudicated
                                         sheet folded back (rejected rows to the quarantine)
5. ``sft data check / dedup / split``   -> data/train.jsonl, data/val.jsonl; ``sft data leak`` against the
                                         hand-written test set (golden/test.jsonl) last

The teacher here is *scripted*: drafts written by hand from the filings (``teacher/drafts.json``),
served by a small OpenAI-compatible server on 127.0.0.1, so step 2 runs the same client, prompt,
parsing and grounding check as with a real model (the bundled 135M model cannot write the JSON).
The verdict sheets in ``review/`` were filled in by hand on the sheet step 3 wrote. Every command
runs from this folder, so the provenance in the rows (``meta.doc``) reads ``docs/<file>``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PORT = 18765
SYSTEM = "你是企业年报分析助手。"


def sft(*args: str) -> dict[str, Any]:
    """One ``sft`` command from this folder; its --json report (exit 1 = findings, 2+ = failure)."""
    cmd = [sys.executable, "-m", "sftkit.cli", *args, "--json"]
    print("$ sft " + " ".join(args), flush=True)
    done = subprocess.run(cmd, check=False, cwd=HERE, capture_output=True, text=True, encoding="utf-8")
    if done.returncode > 1:
        sys.exit(f"failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print("  " + json.dumps({k: v for k, v in report.items() if not isinstance(v, list | dict)},
                            ensure_ascii=False), flush=True)
    return report


def scripted_teacher(chunks: Path) -> ThreadingHTTPServer:
    """An OpenAI-compatible endpoint that answers each drafting prompt with the hand-written pairs of
    the chunk the prompt quotes."""
    drafts = json.loads((HERE / "teacher" / "drafts.json").read_text(encoding="utf-8"))
    texts = [json.loads(line) for line in chunks.read_text(encoding="utf-8").splitlines()]

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: dict[str, Any]) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"object": "list", "data": [{"id": "scripted-teacher", "object": "model"}]})

        def do_POST(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = req["messages"][-1]["content"]
            chunk = next((c["id"] for c in texts if c["text"] in prompt), None)
            reply = json.dumps({"pairs": drafts.get(chunk, [])}, ensure_ascii=False)
            self._send({"object": "chat.completion", "model": "scripted-teacher",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                     "finish_reason": "stop"}]})

        def log_message(self, *args: Any) -> None:
            pass

    try:  # a fixed port keeps the teacher's name in meta.teacher, and so the data files, the same per rebuild
        server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    sft("data", "extract", "docs", "--out", "data/chunks.jsonl", "--force")
    server = scripted_teacher(HERE / "data" / "chunks.jsonl")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        sft("data", "synth", "data/chunks.jsonl", "--teacher", url, "--pairs", "5", "--system", SYSTEM,
            "--out", "data/drafts.jsonl", "--force")
    finally:
        server.shutdown()
    sft("data", "sample", "data/drafts.jsonl", "--per-thousand", "100", "--seed", "0", "--force")
    if not (HERE / "review" / "final.csv").is_file():
        sys.exit("fill in a copy of data/drafts.review.csv per reviewer (review/reviewer_a.csv, reviewer_b.csv) "
                 "and the adjudicated verdicts in review/final.csv, then run this again")
    sft("data", "agree", "review/reviewer_a.csv", "review/reviewer_b.csv", "--min-kappa", "0.6")
    sft("data", "review", "review/final.csv", "--data", "data/drafts.jsonl", "--out", "data/reviewed.jsonl",
        "--quarantine", "data/quarantine.jsonl", "--force")
    sft("data", "check", "data/reviewed.jsonl")
    sft("data", "dedup", "data/reviewed.jsonl", "--out", "data/deduped.jsonl", "--force")
    # no test share: the test set is golden/test.jsonl, questions a reviewer wrote in users' words (README)
    sft("data", "split", "data/deduped.jsonl", "--val", "0.1", "--seed", "0", "--out-dir", "data", "--force")
    (HERE / "data" / "test.jsonl").unlink()  # the split's empty test part
    sft("data", "leak", "data/train.jsonl", "golden/test.jsonl")


if __name__ == "__main__":
    main()
