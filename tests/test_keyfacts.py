"""The key_facts metric: the figures and names an answer must hold, checked on Chinese by hand."""

from __future__ import annotations

import pytest

from sftkit.core.results import headline_metric
from sftkit.core.vocab import canonical_metric
from sftkit.evaluate import metrics as M
from sftkit.evaluate.keyfacts import facts, key_facts, missing, names, numbers

REF = "2023年恒远新能源实现营业收入128.64亿元，同比增长23.5%。"


def test_numbers_are_canonical_and_whole():
    assert numbers("研发人员1,286人，每10股派发3.00元") == ["1286", "10", "3"]
    assert numbers("营业收入１２８．６４亿元") == ["128.64"]  # full-width digits
    assert numbers("同比增长5%，100亿元") == ["5", "100"]  # a Chinese comma is not a thousands separator
    assert missing("2017年收入", facts("17亿元")) == ["17"]  # 17 is not found inside 2017
    assert not missing("收入17亿元", facts("17.00亿元"))


def test_names_are_proper_nouns_not_common_words():
    assert names("恒远新能源总部位于江苏省常州市，在宜宾和匈牙利德布勒森设有基地") == [
        "恒远", "江苏省", "常州市", "宜宾", "匈牙利", "德布勒森"]
    # jieba's dictionary lists 金红利 as a person and 上市公司 as an organisation: neither is a name here
    assert names("归属于上市公司股东的净利润，每10股派发现金红利3元") == []
    assert names("Revenue of BYD rose while Tesla shipped 21.6GWh") == ["BYD", "Tesla"]  # not Revenue, not GWh


def test_scores_by_hand():
    refs = [REF, REF, REF, "好的。"]  # facts: 2023, 128.64, 23.5, 恒远 ; the last reference has none
    preds = ["恒远新能源2023年营收128.64亿元，增长23.5%",  # all 4
             "营业收入128.64亿元，增长20.1%",  # 1 of 4; states 20.1, which the reference lacks
             "我不知道",  # 0 of 4
             "好的。"]
    scores, details = key_facts(preds, refs)
    assert scores["key_facts_recall"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert scores["key_facts_accuracy"] == pytest.approx(1 / 3)
    assert scores["key_facts_precision"] == pytest.approx(4 / 5)  # 2023 128.64 23.5 | 128.64 20.1
    assert details["answers_without_facts"] == 1 and details["numbers_total"] == 9 and details["names_found"] == 1
    assert details["missing"][0] == {"i": 1, "missing": ["2023", "23.5", "恒远"]}
    assert "key_facts_precision" not in key_facts(["不知道"], [REF])[0]  # no figure stated: nothing to be wrong


def test_compute_names_it_the_primary_and_headline():
    assert canonical_metric("key_facts") == "key_facts" == canonical_metric("key_facts_recall")
    res = M.compute(["key_facts", "rouge"], ["恒远新能源2023年营收128.64亿元，增长23.5%", "收入很高", "好的"],
                    [REF, REF, "好的"])
    assert res.primary == "key_facts"
    assert res.per_example == [1.0, 0.0, 1.0]  # a reference without facts: right when contained
    assert headline_metric(res.scores) == "key_facts_recall"
    assert res.details["key_facts"]["answers_with_facts"] == 2
