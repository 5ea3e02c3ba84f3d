"""A seeded generator of broken data files in every layout and file type.

Each file is written with a known number of rows (``rows``), so a test can check
that the loader accounts for every one of them: ``valid + rejected == total == rows``.
Rows are valid base rows of one layout, then mutated: keys dropped or renamed, values
replaced by wrong types, nulls, nested garbage, huge strings, lone surrogate escapes,
deep nesting (100k levels); lines cut, invalid UTF-8 bytes, a BOM, CRLF endings.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it

BASE: dict[str, list[dict[str, Any]]] = {
    "messages": [
        {"messages": [{"role": "user", "content": "你好，请介绍一下自己"},
                      {"role": "assistant", "content": "我是助手。"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}], "tools": []},
    ],
    "sharegpt": [
        {"conversations": [{"from": "human", "value": "天气怎么样？"}, {"from": "gpt", "value": "晴天。"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "f"}'},
                           {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "a"}],
         "tools": '[{"name": "f"}]'},
    ],
    "alpaca": [
        {"instruction": "翻译成英文", "input": "你好", "output": "Hello"},
        {"instruction": "Sum", "input": "1 2", "output": "3", "system": "math", "history": [["hi", "hello"]]},
    ],
    "cot": [{"question": "3*4?", "thinking": "3 fours", "answer": "12"}],
    "classify": [{"text": "股市今日大涨", "category": ["财经", "体育"], "output": "财经"}],
    "text": [{"text": "A plain pre-training paragraph. 一段中文。"}],
}

GARBAGE: list[Any] = [
    None, 0, -1, 1.5, 1e308, True, False, "", "   ", "\t\n", [], {}, [None], [[[]]], {"a": {"b": {"c": None}}},
    "x" * 200_000, "emoji 😀 and 中文", "\u0000nul\u0001", "[[[[", "{oops", ["a", 1, None, {"k": []}],
    [{"role": "user"}], [{"from": 5, "value": []}], {"role": "assistant", "content": "hi"},
]


@dataclass
class Corpus:
    path: Path
    layout: str
    rows: int | None  # rows written; None when a syntax break may merge rows (CSV quotes)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path inside a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for p in path[:-1]:
        obj = obj[p]
    return obj


def mutate(row: dict[str, Any], rng: random.Random) -> Any:
    """A structural mutation of one valid row (the result may or may not still be valid)."""
    row = json.loads(json.dumps(row))
    paths = _paths(row)
    kind = rng.randrange(8)
    if kind == 0:  # whole row replaced
        return rng.choice([None, 5, "row", [row], [], True])
    path = rng.choice(paths)
    parent, key = _parent(row, path), path[-1]
    if kind in (1, 2):  # drop a key or list element
        del parent[key]
    elif kind in (3, 4, 5):  # wrong type / null / garbage
        parent[key] = rng.choice(GARBAGE)
    elif kind == 6 and isinstance(parent, dict):  # rename a key
        parent[f"{key}_x" if rng.random() < 0.5 else str(key).upper()] = parent.pop(key)
    else:  # lone surrogate (written as an escape) or nesting just below the parser's limit
        parent[key] = rng.choice(["bad \ud800 text", "\udfff", _nest(rng.randrange(50, 400))])
    return row


def _nest(depth: int) -> Any:
    v: Any = "deep"
    for _ in range(depth):
        v = [v]
    return v


def _line(value: Any) -> str:
    # ensure_ascii: lone surrogates become \udXXX escapes (valid JSON, invalid text)
    return json.dumps(value, ensure_ascii=True)


def _break_bytes(line: bytes, rng: random.Random) -> bytes:
    """Syntax-level damage that keeps the row on its own line."""
    kind = rng.randrange(6)
    if kind == 0:
        return line[: rng.randrange(1, max(2, len(line)))]  # cut short
    if kind == 1:
        i = rng.randrange(len(line))
        return line[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + line[i:]  # invalid UTF-8
    if kind == 2:
        return b"\xef\xbb\xbf" + line  # a BOM in the middle of the file
    if kind == 3:
        return DEEP.encode()
    if kind == 4:
        return line.replace(b'"', b"'", 2)  # single quotes: not JSON
    return line + b" trailing"


def jsonl_file(dir: Path, layout: str, n: int, rng: random.Random) -> Corpus:
    """``n`` rows: mutated rows of ``layout`` and syntax damage, BOM at the start, CRLF endings
    on some lines, blank lines in between (blank lines are not rows)."""
    out = [b"\xef\xbb\xbf"]
    for i in range(n):
        base = rng.choice(BASE[layout])
        value = mutate(base, rng) if rng.random() < 0.85 else base
        line = _line(value).encode()
        if rng.random() < 0.25:
            line = _break_bytes(line, rng)
        out.append(line + (b"\r\n" if i % 3 == 0 else b"\n"))
        if i % 17 == 0:
            out.append(b"\n   \n")
    p = dir / f"{layout}.jsonl"
    p.write_bytes(b"".join(out))
    return Corpus(p, layout, n)


def json_array_file(dir: Path, layout: str, n: int, rng: random.Random) -> Corpus:
    """A pretty-printed JSON array (one element per line) with mutated and broken elements."""
    elems = []
    for _ in range(n):
        value = mutate(rng.choice(BASE[layout]), rng)
        text = _line(value)
        if rng.random() < 0.15:
            text = rng.choice([text[: max(1, len(text) // 2)], text + " x", text.replace('"', "'", 2)])
        elems.append("  " + text)
    p = dir / f"{layout}.json"
    p.write_text("[\n" + ",\n".join(elems) + "\n]\n", encoding="utf-8", errors="surrogatepass")
    return Corpus(p, layout, n)


def csv_file(dir: Path, n: int, rng: random.Random, delimiter: str = ",") -> Corpus:
    """Alpaca columns with empty/missing/extra cells, invalid bytes, JSON-in-cells, CRLF."""
    sep = delimiter.encode()
    lines = [sep.join([b"instruction", b"input", b"output", b"history"])]
    cells = [b"q", b"", b"   ", "中文".encode(), b"x" * 50_000, b'"a ""quoted"" cell"', b'"multi\r\nline"',
             b"[[\"u\", \"v\"]]", b"[[1]]", DEEP[:2000].encode(), b"\xff\xfe", b"null"]
    for _ in range(n):
        row = [rng.choice(cells) for _ in range(rng.choice([3, 4, 4, 4, 5, 2]))]
        if rng.random() < 0.3:
            row = [rng.choice([b"q", "中文".encode()]), b"", b"answer", rng.choice([b"", b'"[[""u"", ""v""]]"'])]
        if all(not c.strip() for c in row):
            row[0] = b"q"  # an all-empty record is treated like a blank line; keep it a row
        lines.append(sep.join(row))
    p = dir / ("alpaca.tsv" if delimiter == "\t" else "alpaca.csv")
    p.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return Corpus(p, "alpaca", n)


def parquet_file(dir: Path, n: int, rng: random.Random) -> Corpus:
    """A Parquet file with typed columns: nulls, empty strings, empty and null-filled lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    roles = ["user", "assistant", "system", "tool", "robot", None, ""]
    msgs = []
    for _ in range(n):
        k = rng.randrange(0, 4)
        if rng.random() < 0.3:
            msgs.append([{"role": "user", "content": "问题"}, {"role": "assistant", "content": "答案"}])
            continue
        msgs.append(None if rng.random() < 0.1 else [
            {"role": rng.choice(roles), "content": rng.choice(["hi", "", None, "答案"])} for _ in range(k)])
    table = pa.table({"messages": pa.array(msgs, pa.list_(turn)),
                      "label": pa.array([rng.choice([None, "a", ""]) for _ in range(n)], pa.string())})
    p = dir / "messages.parquet"
    pq.write_table(table, p)
    return Corpus(p, "messages", n)


def build(dir: Path, seed: int = 0) -> list[Corpus]:
    rng = random.Random(seed)
    dir.mkdir(parents=True, exist_ok=True)
    out = [jsonl_file(dir, layout, 170, rng) for layout in BASE]
    out += [json_array_file(dir, layout, 40, rng) for layout in BASE]
    out += [csv_file(dir, 80, rng), csv_file(dir, 60, rng, "\t"), parquet_file(dir, 60, rng)]
    for name, data in {"empty.jsonl": b"", "empty.json": b"", "empty.csv": b"", "blank.jsonl": b"\n\r\n  \n",
                       "bom_only.jsonl": b"\xef\xbb\xbf", "header_only.csv": b"instruction,output\r\n"}.items():
        (dir / name).write_bytes(data)
        out.append(Corpus(dir / name, "auto", 0))
    return out
