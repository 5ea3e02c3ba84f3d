"""dedup, lint, split, leak, mix, stats and fold_rendered on small hand-made data."""

from __future__ import annotations

import json

import pytest

from sftkit.core.conversation import Conversation, Message
from sftkit.data import LoadResult, fold_rendered
from sftkit.data.dedup import find_duplicates
from sftkit.data.leak import find_leaks
from sftkit.data.lint import lint
from sftkit.data.mix import mix
from sftkit.data.split import recommend_val_share, split
from sftkit.data.text import distinct_n, tokens


def qa(q: str, a: str, i: int = 0, label: str | None = None) -> Conversation:
    return Conversation([Message("user", q), Message("assistant", a)], source=f"f.jsonl:{i + 1}", label=label)


LONG = "the quick brown fox jumps over the lazy dog near the river bank on a sunny day in june"


def test_dedup_exact_and_near() -> None:
    convs = [qa("Hi", "Hello"), qa("hi ", "hello", 1), qa(LONG, "ok fine", 2), qa(LONG + " again", "ok fine", 3),
             qa("完全不同的问题", "中文回答内容在这里", 4)]  # fmt: skip
    d = find_duplicates(convs, threshold=0.6)
    assert d["exact"] == [["f.jsonl:1", "f.jsonl:2"]]
    assert d["near"] == [["f.jsonl:3", "f.jsonl:4"]]
    assert d["keep"] == [0, 2, 4] and d["removed"] == 2


def test_dedup_chinese_near() -> None:
    a = "机器学习是人工智能的一个分支，它使计算机能够从数据中学习规律并做出预测。"
    convs = [qa("问", a), qa("问", a.replace("预测", "判断"), 1)]
    assert find_duplicates(convs, threshold=0.7)["near"] == [["f.jsonl:1", "f.jsonl:2"]]


def test_lint_kinds() -> None:
    convs = [
        qa("What is the capital of France?", "Paris."),
        qa("What is the capital of France?", "Lyon.", 1),
        qa("Tell me", "k", 2),
        qa("Please repeat this sentence back", "Please repeat this sentence back to me now", 3),
        qa("Who are you?", "I am {{name}}.", 4),
        qa("介绍一下北京的历史和文化", "Beijing is the capital of China with a long history.", 5),
        qa("把这句话翻译成英文：你好", "Hello", 6),
    ]
    counts = lint(convs)["counts"]
    assert counts == {"conflicting_answer": 1, "short_reply": 1, "repeats_prompt": 1, "placeholder": 1,
                      "mixed_language": 1}  # fmt: skip


def test_split_deterministic_and_stratified() -> None:
    convs = [qa(f"q{i}", "a", i, label="pos" if i % 4 == 0 else "neg") for i in range(200)]
    a = split(convs, val=0.1, test=0.1, seed=3, stratify=True)
    b = split(convs, val=0.1, test=0.1, seed=3, stratify=True)
    assert [c.source for c in a["val"]] == [c.source for c in b["val"]]
    assert {k: len(v) for k, v in a.items()} == {"train": 160, "val": 20, "test": 20}
    assert sum(c.label == "pos" for c in a["val"]) == 5  # 25% of 20
    assert not {c.source for c in a["val"]} & {c.source for c in a["train"]}
    c = split(convs, val=0.1, test=0.1, seed=4)
    assert [x.source for x in c["val"]] != [x.source for x in a["val"]]
    with pytest.raises(ValueError):
        split(convs, val=0.6, test=0.5)


def test_recommend_val_share() -> None:
    assert recommend_val_share(500) == (0.2, recommend_val_share(500)[1])
    assert recommend_val_share(800)[0] == 0.125
    assert recommend_val_share(5000)[0] == 0.1
    assert recommend_val_share(50_000)[0] == 0.05
    assert "< 1,000" in recommend_val_share(300)[1]


def test_leak() -> None:
    train = [qa("What is the capital of France?", "Paris"), qa(LONG, "x", 1)]
    test = [qa("what is the capital of  france?", "Paris", 0), qa(LONG + " too", "x", 1), qa("unrelated", "y", 2)]
    leaks = find_leaks(train, test, threshold=0.7)
    assert [(x["test"], x["kind"]) for x in leaks] == [("f.jsonl:1", "exact"), ("f.jsonl:2", "near")]


def test_mix_weights() -> None:
    a = LoadResult([qa(f"a{i}", "x", i) for i in range(10)], [], 10, "alpaca", "a.jsonl")
    b = LoadResult([qa(f"b{i}", "x", i) for i in range(100)], [], 100, "alpaca", "b.jsonl")
    rows, rep = mix([(a, 2.0), (b, 0.2), (a, 3)], seed=1)
    assert [s["taken"] for s in rep["sources"]] == [20, 20, 3] and rep["total"] == 43 == len(rows)
    assert rep["sources"][0]["upsampled"] and not rep["sources"][1]["upsampled"]
    rows2, _ = mix([(a, 2.0), (b, 0.2), (a, 3)], seed=1)
    assert [r.messages[0].content for r in rows] == [r.messages[0].content for r in rows2]
    with pytest.raises(ValueError):
        mix([(a, -1.0)])


def test_text_helpers() -> None:
    assert tokens("Hello, World! 我爱北京天安门")[:2] == ["hello", "world"]
    assert "北京" in tokens("我爱北京天安门") or "天安门" in tokens("我爱北京天安门")
    assert distinct_n(["a a a a"], 1) == 0.25 and distinct_n([], 2) == 0.0


def test_stats_and_fold(tokenizer) -> None:
    from sftkit.core.vocab import Overflow
    from sftkit.data import stats as st
    from sftkit.templates.hf import HFChatTemplate
    from sftkit.templates.render import Renderer

    convs = [qa("Hi " * 5, "Hello " * (10 * i + 1), i) for i in range(10)]
    out = st.compute(convs, Renderer(HFChatTemplate(tokenizer), tokenizer), cutoff=60)
    lens = out["_lengths"]
    assert out["rendered"] == 10 and out["tokens"]["total"]["max"] == int(lens.total.max())
    assert all(int(p + r) == int(t) for p, r, t in zip(lens.prompt, lens.response, lens.total, strict=True))
    assert out["recommended_cutoff"]["p99"] >= out["tokens"]["total"]["p99"]
    cut = next(c for c in out["cut"] if c["cutoff"] == 60)
    assert cut["rows_cut"] == round(float((lens.total > 60).mean()), 4) and 0 < cut["response_tokens_cut"] < 1
    assert out["turns"]["mean"] == 1.0 and out["cdf_total"][-1][1] == 1.0
    json.dumps({k: v for k, v in out.items() if k != "_lengths"})

    r = Renderer(HFChatTemplate(tokenizer), tokenizer, cutoff_len=40, overflow=Overflow.drop)
    kept, rejects = fold_rendered(convs, r.render_many(convs))
    assert len(kept) + len(rejects) == 10 and rejects
    assert rejects[0].file == "f.jsonl" and rejects[0].reason.startswith("too long: dropped")


def test_weighted_upsampling_never_puts_a_row_in_both_train_and_val(tmp_path, tokenizer) -> None:
    """val is held out of each weighted file before mixing: an upsampled row (weight 3.0) has all
    its copies on one side of the split."""
    from sftkit.core.config import DataConfig
    from sftkit.data.prepare import prepare
    from sftkit.templates import HFChatTemplate, Renderer

    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text("".join(json.dumps({"instruction": f"小问题{i}", "output": f"答{i}"}, ensure_ascii=False) + "\n"
                             for i in range(20)), encoding="utf-8")
    big.write_text("".join(json.dumps({"instruction": f"big {i}", "output": f"a{i}"}) + "\n" for i in range(40)))
    data = DataConfig(train=[{"path": str(small), "weight": 3.0}, {"path": str(big), "weight": 0.5}], val_size=0.2)
    out = prepare(data, Renderer(HFChatTemplate(tokenizer), tokenizer), seed=0)
    val = [c.messages[0].content for c in out.val_conversations]
    assert len(val) == 4 + 8 and len(set(val)) == len(val)  # 20% of each file, each row once
    train_rows = out.train.examples
    assert len(train_rows) == 16 * 3 + 16  # the kept rows, weighted: 3 x 16 small + half of 32 big
    texts = "\n".join(e.text for e in train_rows)
    assert not [q for q in val if f"\n{q}<|im_end|>" in texts]
    assert out.report["train"]["files"][0]["val_held_out"] == 4
