"""Continued pre-training data: documents -> EOS-separated, cutoff_len-sized blocks, every row accounted for."""

from __future__ import annotations

import json
from itertools import chain

import pytest

from chartok import CharTokenizer
from sftkit.core.errors import DataError
from sftkit.data.pretrain import load_text_file, pack, position_ids, prepare_pretrain, tokenize_documents

EOS = "<|im_end|>"


def test_txt_one_document_per_line(tmp_path) -> None:
    path = tmp_path / "docs.txt"
    path.write_bytes(b"first doc\n\n   \nsecond doc\r\nbad \xff byte\nthird\n")
    res = load_text_file(path)
    assert [(c.text, c.source) for c in res.conversations] == [
        ("first doc", f"{path}:1"), ("second doc", f"{path}:4"), ("third", f"{path}:6")]  # fmt: skip
    assert res.total == 4  # blank lines are not rows
    assert [(r.line, r.reason) for r in res.rejects] == [(5, "invalid UTF-8 (byte 4)")]


def test_jsonl_text_rows_and_rejects(tmp_path) -> None:
    path = tmp_path / "c4.jsonl"
    rows = [{"text": "a document"}, {"text": ""}, {"body": "x"}, {"text": 3}, "not json", {"text": "another"}]
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    res = load_text_file(path)
    assert [c.text for c in res.conversations] == ["a document", "another"]
    assert [(r.line, r.reason.split(" (")[0]) for r in res.rejects] == [
        (2, "field 'text' is empty"), (3, "missing field 'text'"), (4, "field 'text' must be a string, got int"),
        (5, "invalid JSON")]  # fmt: skip


def test_other_column(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"content": "hello"}\n', encoding="utf-8")
    assert load_text_file(path, column="content").conversations[0].text == "hello"


def test_blocks_are_cutoff_len_with_eos_after_each_document() -> None:
    tok = CharTokenizer()
    docs = tokenize_documents(["ab", "cde", "f"], tok)
    assert [tok.decode(d) for d in docs] == [f"ab{EOS}", f"cde{EOS}", f"f{EOS}"]
    packed = pack(docs, 3)
    assert [tok.decode(b) for b in packed.blocks] == [f"ab{EOS}", "cde", f"{EOS}f{EOS}"]
    packed = pack(docs, 4)
    assert [tok.decode(b) for b in packed.blocks] == [f"ab{EOS}c", f"de{EOS}f", EOS]  # the partial last block kept
    assert (packed.tokens, packed.last_block_tokens, packed.dropped_tokens) == (9, 1, 0)


def test_drop_last_drops_and_counts_the_partial_block() -> None:
    docs = [[1, 2, 9], [3, 4, 5, 9]]
    packed = pack(docs, 3, drop_last=True)
    assert packed.blocks == [[1, 2, 9], [3, 4, 5]] and (packed.tokens, packed.dropped_tokens) == (7, 1)
    with pytest.raises(DataError, match="cutoff_len must be at least 1"):
        pack(docs, 0)


def test_bos_only_when_the_tokenizer_adds_one() -> None:
    class BosTokenizer(CharTokenizer):  # Llama-style: a lone text gets BOS
        def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
            out = super().__call__(texts, add_special_tokens, return_offsets_mapping)
            if add_special_tokens:
                out["input_ids"] = [[self.bos_token_id, *ids] for ids in out["input_ids"]]
            return out

    tok = BosTokenizer(bos_token="<s>")
    assert [tok.decode(d) for d in tokenize_documents(["ab"], tok)] == [f"<s>ab{EOS}"]
    assert [tok.decode(d) for d in tokenize_documents(["ab"], CharTokenizer(bos_token="<s>"))] == [f"ab{EOS}"]


def test_position_ids_restart_after_each_eos() -> None:
    assert position_ids([5, 6, 9, 7, 9, 8], eos_id=9) == [0, 1, 2, 0, 1, 0]


def test_prepare_conserves_every_token(tmp_path, tokenizer) -> None:
    texts = ["The cat sat on the mat.", "长城是中国古代的军事防御工程。", "Short.", "A somewhat longer document " * 20]
    (tmp_path / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts[:2]) + '\n{"text": ""}\n', encoding="utf-8"
    )
    (tmp_path / "b.txt").write_text("\n".join(texts[2:]) + "\n", encoding="utf-8")
    data = prepare_pretrain([tmp_path / "a.jsonl", tmp_path / "b.txt"], tokenizer, 16)
    flat = list(chain.from_iterable(data.blocks))
    expected = list(
        chain.from_iterable(
            [*tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id] for t in texts
        )
    )
    assert flat == expected  # token count conserved, documents in order, EOS after each
    assert all(len(b) == 16 for b in data.blocks[:-1]) and 0 < len(data.blocks[-1]) <= 16
    assert data.report["tokens"] == len(expected) and data.report["blocks"] == len(data.blocks)
    assert data.report["documents"] == 4 and [(r.line, r.reason) for r in data.rejects] == [
        (3, "field 'text' is empty")
    ]
    assert [f["valid"] for f in data.report["files"]] == [2, 2]


def test_prepare_refuses_nothing_usable(tmp_path, tokenizer) -> None:
    (tmp_path / "e.jsonl").write_text('{"text": " "}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no usable document .* \(first: .*e\.jsonl:1: field 'text' is empty\)"):
        prepare_pretrain([tmp_path / "e.jsonl"], tokenizer, 16)
    (tmp_path / "s.txt").write_text("tiny\n", encoding="utf-8")
    with pytest.raises(DataError, match="less than one block"):
        prepare_pretrain([tmp_path / "s.txt"], tokenizer, 1024, drop_last=True)


def test_llamafactory_pretrain_demo_files(shared_data, tokenizer) -> None:
    peers = shared_data / "peers"
    data = prepare_pretrain([peers / "c4_demo.jsonl", peers / "wiki_demo.txt"], tokenizer, 1024)
    assert [(f["total"], f["valid"]) for f in data.report["files"]] == [(300, 300), (30, 30)] and data.rejects == []
    assert all(len(b) == 1024 for b in data.blocks[:-1])
    n = data.report["tokens"]
    assert sum(map(len, data.blocks)) == n and len(data.blocks) == -(-n // 1024)
    eos = tokenizer.eos_token_id
    assert sum(b.count(eos) for b in data.blocks) == 330  # one EOS per document, none from the text itself
    assert data.report["special_token_text"]["documents"] == 0


def test_special_token_text_inside_a_document_is_reported(tmp_path, tokenizer) -> None:
    path = tmp_path / "d.txt"
    path.write_text("plain text\nthe tag <|im_end|> ends a turn\n", encoding="utf-8")
    data = prepare_pretrain([path], tokenizer, 8)
    assert data.report["special_token_text"] == {"documents": 1, "first": [f"{path}:2"]}
