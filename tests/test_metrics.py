"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import pytest

from sftkit.evaluate import metrics as M


def test_normalisation_full_width_and_case():
    assert M.normalize("  ＡＢＣ，Hello\tWorld ") == "abc,hello world"
    assert M.normalize_label(" Positive。") == "positive"
    assert M.normalize_label("正面!") == "正面"  # full-width "!" becomes "!" under NFKC, then dropped


def test_exact_match():
    assert M.exact_match(["Paris", " paris ", "Rome"], ["paris", "Paris", "Milan"]) == pytest.approx(2 / 3)
    assert M.exact_match([], []) == 0.0


def test_tokenize_mixed_text():
    assert M.tokenize("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert M.tokenize("Hello, World! 3.14") == ["hello", ",", "world", "!", "3.14"]
    assert M.tokenize("用Python写代码") == ["用", "python", "写", "代码"]


def test_classification_with_prediction_only_label():
    # refs: a a b b ; preds: a c b a  ->  "c" appears only in predictions
    rep = M.classification(["a", "c", "b", "a"], ["A", "a", "b", "B"])
    assert rep.accuracy == 0.5
    assert rep.labels == ["a", "b", "c"]
    # a: tp=1 fp=1 fn=1 -> p=.5 r=.5 f1=.5 ; b: tp=1 fp=0 fn=1 -> p=1 r=.5 f1=2/3 ; c: tp=0 -> 0
    assert rep.per_label["a"]["f1"] == pytest.approx(0.5)
    assert rep.per_label["b"]["precision"] == 1.0 and rep.per_label["b"]["recall"] == 0.5
    assert rep.per_label["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}
    # macro-F1 over the reference labels {a, b}: (0.5 + 2/3) / 2
    assert rep.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)
    assert rep.confusion == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]


def test_bleu_english_hand_computed():
    # p1=5/6 p2=3/5 p3=1/4 p4=0/3 -> smoothed 1/(2*3); BP=1 (equal lengths)
    got = M.bleu4(["the cat is on the mat"], ["the cat sat on the mat"])
    assert got == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25, rel=1e-6)
    assert M.bleu4(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)


def test_bleu_chinese_hand_computed():
    # hyp [我 爱 北京 天安门] vs ref [我 爱 北京]: p1=3/4 p2=2/3 p3=1/2 p4=0/1 -> 1/2; BP=1
    got = M.bleu4(["我爱北京天安门"], ["我爱北京"])
    assert got == pytest.approx(100 * (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25, rel=1e-6)


def test_bleu_brevity_penalty():
    # hyp "a b c d e" (5) vs ref "a b c d e f g h" (8): all n-grams match, BP = exp(1 - 8/5)
    got = M.bleu4(["a b c d e"], ["a b c d e f g h"])
    assert got == pytest.approx(100 * math.exp(1 - 8 / 5), rel=1e-6)


def test_rouge_chinese_hand_computed():
    # 今天天气很好 -> [今天天气, 很, 好]; 今天天气不错 -> [今天天气, 不错]
    r = M.rouge_scores("今天天气很好", "今天天气不错")
    # ROUGE-1: overlap 1, P=1/3, R=1/2 -> F=0.4 ; no shared bigram ; LCS=1 -> 0.4
    assert r == pytest.approx({"rouge1": 0.4, "rouge2": 0.0, "rougeL": 0.4})


def test_rouge_english_hand_computed():
    r = M.rouge_scores("the cat was found under the bed", "the cat was under the bed")
    # unigrams: overlap 6 of 7/6 -> P=6/7 R=1 ; bigrams: 4 of 6/5 ; LCS = 6
    assert r["rouge1"] == pytest.approx(2 * (6 / 7) / (6 / 7 + 1))
    assert r["rouge2"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert r["rougeL"] == pytest.approx(r["rouge1"])
    agg = M.rouge(["a b", "x"], ["a b", "y"])
    assert agg["rouge1"] == pytest.approx(50.0) and agg["rougeL"] == pytest.approx(50.0)


def test_json_metrics():
    preds = ['```json\n{"name": "Ann", "age": 30, "tags": ["x", "y"]}\n```', '{"name": "bob", "age": 31}', "not json"]
    refs = ['{"name": "Ann", "age": 30, "tags": ["x", "z"]}', '{"name": "Bob", "age": 30}', '{"a": 1}']
    out = M.json_metrics(preds, refs)
    assert out["json_valid"] == pytest.approx(2 / 3)
    # per example: 3/4 fields (tags[1] differs), 1/2 (age differs), 0
    assert out["json_field_match"] == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert out["json_exact"] == 0.0
    assert out["per_field"]["name"] == 1.0 and out["per_field"]["age"] == 0.5 and out["per_field"]["tags[1]"] == 0.0


def test_contains_answer():
    assert M.contains_answer("The answer is 12.", "12")
    assert not M.contains_answer("117", "7") and not M.contains_answer("7.5", "7")
    assert M.contains_answer("北京是中国的首都。", "北京")


def test_infer_metrics():
    labels = ["positive", "negative", "Positive", "neutral", "negative", "positive"]
    assert M.infer_metrics(labels) == ["classification"]
    assert M.infer_metrics(['{"a": 1}', "[1, 2]"]) == ["json", "exact_match"]
    prose = ["The weather is nice today and we went out.", "今天天气很好,我们出去玩了。", "Short answer here."]
    assert M.infer_metrics(prose) == ["bleu", "rouge", "exact_match"]
    assert M.infer_metrics(["a", "b", "c"]) == ["bleu", "rouge", "exact_match"]  # no repeated label set


def test_compute_and_aliases():
    res = M.compute(["accuracy", "f1", "em"], ["pos", "neg"], ["pos", "pos"])
    assert res.scores == {"accuracy": 0.5, "macro_f1": pytest.approx(2 / 3), "exact_match": 0.5}
    assert res.primary == "classification" and res.per_example == [1.0, 0.0]
    assert "classification" in res.details
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute(["nope"], ["a"], ["a"])
