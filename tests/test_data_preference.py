"""Preference files in every layout people have: each row accepted or rejected with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftkit.core.errors import DataError
from sftkit.data.preference import (
    Feedback,
    PreferencePair,
    detect_pref_layout,
    kto_balance,
    load_preference_file,
    require_pairs,
    unpair,
)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    return path


def roles(conv) -> list[str]:
    return [m.role for m in conv.messages]


# --- the real LLaMA-Factory demo files ---------------------------------------------------


@pytest.mark.parametrize("name", ["dpo_en_demo.json", "dpo_zh_demo.json"])
def test_llamafactory_dpo_demo_files_load_without_rejects(shared_data, name) -> None:
    res = load_preference_file(shared_data / "peers" / name)
    assert (res.format, res.total, len(res.rows), res.rejects) == ("sharegpt_pairs", 300, 300, [])
    assert res.paired and all(isinstance(r, PreferencePair) for r in res.rows)
    assert all(r.prompt.messages[-1].role == "user" for r in res.rows)
    assert all(r.chosen.role == r.rejected.role == "assistant" for r in res.rows)
    raw = json.loads((shared_data / "peers" / name).read_text(encoding="utf-8"))
    assert [r.chosen.content for r in res.rows] == [x["chosen"]["value"] for x in raw]
    with_system = sum(1 for x in raw if x["conversations"][0]["from"] == "system")
    assert sum(1 for r in res.rows if r.prompt.messages[0].role == "system") == with_system > 0


def test_dpo_en_demo_multi_turn_prompts_and_lines(shared_data) -> None:
    path = shared_data / "peers" / "dpo_en_demo.json"
    res = load_preference_file(path)
    shapes = {len(r.prompt.messages) for r in res.rows}
    assert {1, 2, 5, 7} <= shapes  # [human], [system, human], 2 and 3 earlier exchanges
    assert roles(next(r.prompt for r in res.rows if len(r.prompt.messages) == 5)) == [
        "user", "assistant", "user", "assistant", "user"]  # fmt: skip
    lines = path.read_text(encoding="utf-8").splitlines()
    for r in res.rows[:20]:  # each source points at the line where the row's object opens
        line = int(r.source.rsplit(":", 1)[1])
        assert lines[line - 1].strip() == "{"


def test_llamafactory_kto_demo_file(shared_data) -> None:
    res = load_preference_file(shared_data / "peers" / "kto_en_demo.json")
    assert (res.format, res.total, len(res.rows), res.rejects) == ("messages_feedback", 300, 300, [])
    assert not res.paired and all(isinstance(r, Feedback) for r in res.rows)
    assert sum(r.desirable for r in res.rows) == 150
    raw = json.loads((shared_data / "peers" / "kto_en_demo.json").read_text(encoding="utf-8"))
    assert [r.completion.content for r in res.rows] == [x["messages"][-1]["content"] for x in raw]
    assert [len(r.prompt.messages) for r in res.rows] == [len(x["messages"]) - 1 for x in raw]
    assert kto_balance(res.rows) == {"desirable": 150, "undesirable": 150, "desirable_weight_range": [1.0, 1.3333]}


# --- each layout, hand-written -----------------------------------------------------------


def test_sharegpt_pairs_pretty_printed_json(tmp_path) -> None:
    rows = [
        {
            "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"}],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
        },
        {
            "conversations": [
                {"from": "human", "value": "你好"},
                {"from": "gpt", "value": "你好！"},
                {"from": "human", "value": "再见"},
            ],
            "chosen": {"from": "gpt", "value": "再见！"},
            "rejected": {"from": "gpt", "value": "不"},
        },
    ]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    res = load_preference_file(path)
    assert res.format == "sharegpt_pairs" and res.rejects == []
    a, b = res.rows
    assert roles(a.prompt) == ["system", "user"] and (a.chosen.content, a.rejected.content) == ("4", "5")
    assert roles(b.prompt) == ["user", "assistant", "user"] and b.chosen.content == "再见！"
    opens = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line == "  {"]
    assert [a.source, b.source] == [f"{path}:{n}" for n in opens] and opens[0] == 2


def test_openai_messages_pairs_with_system_key(tmp_path) -> None:
    row = {
        "messages": [{"role": "user", "content": "hi"}],
        "system": "Answer in French.",
        "chosen": {"role": "assistant", "content": "salut"},
        "rejected": {"role": "assistant", "content": "hi"},
    }
    res = load_preference_file(write_jsonl(tmp_path / "m.jsonl", [row]))
    assert res.format == "sharegpt_pairs"
    assert [(m.role, m.content) for m in res.rows[0].prompt.messages] == [
        ("system", "Answer in French."),
        ("user", "hi"),
    ]


def test_alpaca_pairs(tmp_path) -> None:
    rows = [
        {"instruction": "Translate", "input": "cat", "chosen": "chat", "rejected": "chien", "system": "Be exact."},
        {"instruction": "Next?", "input": "", "history": [["1", "2"]], "chosen": "3", "rejected": "4"},
    ]
    res = load_preference_file(write_jsonl(tmp_path / "a.jsonl", rows))
    assert res.format == "alpaca_pairs" and res.rejects == []
    a, b = res.rows
    assert [(m.role, m.content) for m in a.prompt.messages] == [("system", "Be exact."), ("user", "Translate\n\ncat")]
    assert roles(b.prompt) == ["user", "assistant", "user"] and b.prompt.messages[-1].content == "Next?"


def test_trl_prompt_pairs_strings_and_messages(tmp_path) -> None:
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "colour?"}],
            "chosen": [{"role": "assistant", "content": "blue"}],
            "rejected": [{"role": "assistant", "content": "red"}],
        },
    ]
    res = load_preference_file(write_jsonl(tmp_path / "t.jsonl", rows))
    assert res.format == "prompt_pairs" and res.rejects == []
    a, b = res.rows
    assert [(m.role, m.content) for m in a.prompt.messages] == [("user", "The sky is")]
    assert (a.chosen.content, a.rejected.content) == (" blue.", " green.")
    assert roles(b.prompt) == ["system", "user"] and b.rejected.content == "red"


def test_trl_implicit_prompt_pairs(tmp_path) -> None:
    turn = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    row = {
        "chosen": [*turn, {"role": "assistant", "content": "good"}],
        "rejected": [*turn, {"role": "assistant", "content": "bad"}],
    }
    res = load_preference_file(write_jsonl(tmp_path / "i.jsonl", [row]))
    assert res.format == "implicit_pairs" and res.rejects == []
    r = res.rows[0]
    assert roles(r.prompt) == ["user", "assistant", "user"] and (r.chosen.content, r.rejected.content) == (
        "good",
        "bad",
    )


def test_feedback_layouts(tmp_path) -> None:
    msgs = write_jsonl(tmp_path / "k.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "label": True},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}], "label": False},
    ])  # fmt: skip
    trl = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [{"role": "user", "content": "2+2"}], "completion": [{"role": "assistant", "content": "4"}],
         "label": True},
        {"prompt": "2+2", "completion": "5", "label": False},
    ])  # fmt: skip
    alpaca = write_jsonl(tmp_path / "al.jsonl", [{"instruction": "2+2", "output": "4", "label": 1}])
    for path, fmt in ((msgs, "messages_feedback"), (trl, "prompt_feedback"), (alpaca, "alpaca_feedback")):
        res = load_preference_file(path)
        assert res.format == fmt and res.rejects == [], res.rejects
        assert res.rows[0].desirable is True and res.rows[0].prompt.messages[-1].role == "user"
    assert [r.desirable for r in load_preference_file(msgs).rows] == [True, False]
    assert load_preference_file(trl).rows[1].completion.content == "5"


def test_csv_feedback_labels_are_text(tmp_path) -> None:
    path = tmp_path / "k.csv"
    path.write_text("prompt,completion,label\nhi,hello,true\nhi,bye,False\nhi,meh,maybe\n", encoding="utf-8")
    res = load_preference_file(path)
    assert [r.desirable for r in res.rows] == [True, False]
    assert [(r.line, r.reason) for r in res.rejects] == [(4, "field 'label' must be true or false, got \"maybe\"")]


def test_columns_rename_file_fields(tmp_path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "good": "a", "bad": "b"}])
    res = load_preference_file(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert res.format == "prompt_pairs" and res.rows[0].chosen.content == "a"
    with pytest.raises(DataError, match="'answer' is not a preference key"):
        load_preference_file(path, columns={"answer": "good"})


def test_detection_needs_preference_fields() -> None:
    assert detect_pref_layout({"messages": [], "label": True}) == "messages_feedback"
    assert detect_pref_layout({"instruction": "x", "chosen": "y"}) == "alpaca_pairs"  # rejected missing: still pairs
    assert detect_pref_layout({"messages": []}) is None  # SFT data


# --- rejects, each with its line and reason ----------------------------------------------

BROKEN = [
    {"prompt": "q", "chosen": "same", "rejected": "same"},  # 1
    {"prompt": "q", "chosen": "a"},  # 2
    {"prompt": "q", "chosen": 42, "rejected": "b"},  # 3
    {"prompt": "q", "chosen": "", "rejected": "b"},  # 4
    {"prompt": "  ", "chosen": "a", "rejected": "b"},  # 5
    {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},  # 6
    {"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}] * 2, "rejected": "b"},  # 7
    {
        "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
        "chosen": "a",
        "rejected": "b",
    },  # 8
    '{"prompt": "q", "chosen": "a", ',  # 9
    '["not", "an", "object"]',  # 10
    {"prompt": "ok", "chosen": "  yes ", "rejected": "yes"},  # 11: equal once whitespace is stripped
    {"prompt": [{"role": "user", "content": ""}], "chosen": "a", "rejected": "b"},  # 12
    {"prompt": "fine", "chosen": "a", "rejected": "b"},  # 13: the one good row
    {"prompt": 7, "chosen": "a", "rejected": "b"},  # 14
    {"prompt": "q", "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "a"}},  # 15
    r'{"prompt": "q\ud800", "chosen": "a", "rejected": "b"}',  # 16: a lone surrogate escape
]
REASONS = {
    1: "chosen equals rejected",
    2: "missing field 'rejected'",
    3: "field 'chosen' must be a string or a message object, got int",
    4: "field 'chosen' is empty",
    5: "field 'prompt' is empty",
    6: "field 'chosen' must be an assistant message, got role 'user'",
    7: "field 'chosen' must hold one assistant message, got 2",
    8: "the prompt ends on an assistant turn",
    9: "invalid JSON",
    10: "row is not an object (got list)",
    11: "chosen equals rejected",
    12: "empty content in message 1 (user)",
    14: "field 'prompt' must be a string or a list of messages, got int",
    15: "chosen equals rejected",
    16: "invalid Unicode: a lone surrogate escape",
}


def test_broken_rows_are_rejected_with_line_and_reason(tmp_path) -> None:
    path = write_jsonl(tmp_path / "broken.jsonl", BROKEN)
    res = load_preference_file(path)
    assert res.total == len(BROKEN) == len(res.rows) + len(res.rejects)
    assert [r.source for r in res.rows] == [f"{path}:13"]
    got = {r.line: r.reason for r in res.rejects}
    assert set(got) == set(REASONS)
    for line, reason in REASONS.items():
        assert got[line].startswith(reason), (line, got[line])
    assert all(r.file == str(path) for r in res.rejects)
    assert res.rejects[0].raw == json.dumps(BROKEN[0])  # the row verbatim, for the quarantine file


def test_broken_feedback_rows(tmp_path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},  # no label
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": "maybe"},
        {"messages": [{"role": "user", "content": "q"}], "label": True},
        {"messages": [{"role": "assistant", "content": "a"}], "label": True},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": 2},
    ]
    res = load_preference_file(
        write_jsonl(tmp_path / "k.jsonl", [{"messages": rows[0]["messages"], "label": True}, *rows])
    )
    assert len(res.rows) == 1 and res.format == "messages_feedback"
    assert [(r.line, r.reason.split(";")[0]) for r in res.rejects] == [
        (2, "no preference fields (keys: messages)"),
        (3, "field 'label' must be true or false, got \"maybe\""),
        (4, "field 'messages' must end on the assistant turn the label judges"),
        (5, "the prompt is empty"),
        (6, "field 'label' must be true or false, got 2"),
    ]


def test_mixed_layouts_in_one_file_are_an_error(tmp_path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"instruction": "q", "chosen": "a", "rejected": "b"},
    ])  # fmt: skip
    with pytest.raises(
        DataError,
        match=r"mixed\.jsonl:2: row is in the alpaca_pairs layout but the file is "
        r"prompt_pairs \(from line 1\)",
    ):
        load_preference_file(path)


def test_on_error_fail_names_the_first_reject(tmp_path) -> None:
    path = write_jsonl(tmp_path / "f.jsonl", [BROKEN[12], BROKEN[0]])
    with pytest.raises(DataError, match=r"f\.jsonl:2: chosen equals rejected"):
        load_preference_file(path, on_error="fail")


def test_unknown_format_and_forced_format(tmp_path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="unknown preference format 'dpo'"):
        load_preference_file(path, format="dpo")
    res = load_preference_file(path, format="prompt_feedback")  # forced: every row judged by that layout
    assert res.rows == [] and res.rejects[0].reason == "missing field 'completion'"


# --- what the stages take ----------------------------------------------------------------


def test_pairs_feed_kto_as_one_desirable_and_one_undesirable_row(tmp_path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "q1", "chosen": "a1", "rejected": "b1"}, {"prompt": "q2", "chosen": "a2", "rejected": "b2"}],
    )
    fb = unpair(load_preference_file(path).rows)
    assert [(f.prompt.messages[-1].content, f.completion.content, f.desirable) for f in fb] == [
        ("q1", "a1", True), ("q1", "b1", False), ("q2", "a2", True), ("q2", "b2", False)]  # fmt: skip
    assert fb[1].source == f"{path}:1"
    assert unpair(fb) == fb  # feedback passes through


def test_paired_stages_refuse_unpaired_feedback(tmp_path) -> None:
    pairs = load_preference_file(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}]))
    fb = load_preference_file(write_jsonl(tmp_path / "k.jsonl", [{"prompt": "q", "completion": "a", "label": True}]))
    assert len(require_pairs([pairs], "dpo")) == 1
    with pytest.raises(DataError, match=r"k\.jsonl: stage dpo needs chosen/rejected pairs.*use stage: kto"):
        require_pairs([pairs, fb], "dpo")
