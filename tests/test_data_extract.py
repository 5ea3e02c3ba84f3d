"""``sft data extract``: real documents (text, Markdown, HTML, the example's PDF, PDFs made here
with pypdf) -> clean, page-aware, Chinese-first chunks; every input used or reported."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest

import sftkit
from sftkit.core.errors import DataError
from sftkit.data.chunking import chunk_paragraphs, sentences
from sftkit.data.extract import extract
from wfcli import run_data

pypdf = pytest.importorskip("pypdf")

DOCS = Path(sftkit.__file__).resolve().parent / "examples" / "annual_report" / "docs"
HEADER = "华东精工机械股份有限公司 2023年年度报告"


def _report_txt(tmp_path: Path) -> Path:
    """A 3-page text dump: form feeds between pages, a running header and page-number footer."""
    bodies = [
        "一、主要财务数据\n2023年，公司实现营业收入　５６．７８亿元，同比增长１２．３％。\x07\n"
        "归属于上市公司股东的净利润为4.21亿元，同比增长8.6%。",
        "二、分业务情况\n数控机床业务收入31.02亿元，占营业收入的54.6%。\u200b工业机器人业务收入\n"
        "15.40亿元，同比增长27.9%，是增长最快的业务。",
        "三、风险因素\n钢材等原材料价格波动，可能影响公司的毛利率水平。",
    ]
    pages = [f"{HEADER}\n\n{b}\n\n- {i} -\n" for i, b in enumerate(bodies, 1)]
    p = tmp_path / "huadong_2023.txt"
    p.write_text("\f".join(pages), encoding="utf-8")
    return p


def test_text_pages_cleaned(tmp_path):
    res = extract([_report_txt(tmp_path)], size=200, overlap=0)
    assert [c["id"] for c in res.chunks] == ["huadong_2023#p1-c1", "huadong_2023#p2-c1", "huadong_2023#p3-c1"]
    assert [c["page"] for c in res.chunks] == [1, 2, 3]
    text = "\n".join(c["text"] for c in res.chunks)
    assert HEADER not in text and "- 2 -" not in text  # running header and page numbers gone
    assert "营业收入 56.78亿元，同比增长12.3%。" in text  # full-width digits, %, space normalised
    assert "\x07" not in text and "\u200b" not in text
    assert "工业机器人业务收入15.40亿元" in text  # a line wrapped mid-sentence is joined without a space
    assert all(c["chars"] == len(c["text"]) for c in res.chunks)
    assert res.files[0]["removed_lines"][0] == HEADER


def test_chunks_follow_sentences_with_overlap():
    sents = [f"第{i}项指标同比增长{i}.5%，主要原因是市场需求回暖。" for i in range(1, 31)]
    chunks = chunk_paragraphs(["".join(sents[:15]), "".join(sents[15:])], size=120, overlap=40)
    assert len(chunks) > 3
    assert all(len(c) <= 120 for c in chunks)
    assert all(c.endswith("。") for c in chunks)  # cut at sentence ends, never mid-sentence
    for a, b in pairwise(chunks):
        shared = sentences(a)[-1]
        assert b.startswith(shared)  # the last sentence of a chunk opens the next one
    joined = "".join(sentences(" ".join(chunks)))
    assert all(s in joined for s in sents)  # nothing lost


def test_long_sentence_and_paragraph_preference():
    long = "甲" * 250
    assert [len(c) for c in chunk_paragraphs([long], size=100, overlap=0)] == [100, 100, 50]
    paras = ["第一段。" * 10, "第二段。" * 10, "第三段。" * 10]  # 40 characters each
    chunks = chunk_paragraphs(paras, size=100, overlap=0)
    assert chunks[0] == f"{paras[0]}\n{paras[1]}"  # whole paragraphs when they fit


def test_html_keeps_content_only(tmp_path):
    p = tmp_path / "page.html"
    p.write_text(
        "<html><head><title>T</title><style>.x{color:red}</style><script>var secret = 1;</script></head><body>"
        "<nav><a href='/'>首页</a><a>投资者关系</a></nav><h1>瑞丰 2023 年报</h1>"
        "<p>营业收入 76.38 亿元，同比&nbsp;增长 11.2%&#xFF01;</p>"
        "<table><tr><th>产品</th><th>收入</th></tr><tr><td>速冻食品</td><td>41.02</td></tr></table>"
        "<footer>© 版权所有</footer></body></html>", encoding="utf-8")
    (chunk,) = extract([p]).chunks
    assert chunk["text"] == "瑞丰 2023 年报\n营业收入 76.38 亿元，同比增长 11.2%！\n产品 | 收入\n速冻食品 | 41.02"


def test_markdown_markup_removed(tmp_path):
    p = tmp_path / "r.md"
    p.write_text("# 晶华半导体\n\n> 虚构示例。\n\n## 财务\n**营业收入** 45.12 亿元，见[附表](http://x/y)。\n\n"
                 "| 项目 | 2023 |\n| --- | --- |\n| 净利润 | 3.06 |\n", encoding="utf-8")
    (chunk,) = extract([p]).chunks
    assert chunk["text"] == "晶华半导体\n虚构示例。\n财务\n营业收入 45.12 亿元，见附表。\n项目 | 2023\n净利润 | 3.06"


def test_example_pdf_is_page_aware():
    res = extract([DOCS / "lanhai_logistics_2023.pdf"], size=400, overlap=50)
    assert res.files[0]["pages"] == 3 and not res.skipped
    assert {c["page"] for c in res.chunks} == {1, 2, 3}
    page2 = "\n".join(c["text"] for c in res.chunks if c["page"] == 2)
    assert "国际货运代理业务实现收入71.25亿元" in page2
    assert "冷链车队规模为1,820辆" in page2  # a line the PDF wrapped inside a number's sentence, rejoined
    assert all("2023年年度报告摘要" not in c["text"] and "共 3 页" not in c["text"] for c in res.chunks)
    assert res.chunks[0]["id"].startswith("lanhai_logistics_2023#p1-c")


def _pdf(path: Path, encrypt: str | None = None) -> Path:
    w = pypdf.PdfWriter()
    w.add_blank_page(width=595, height=842)
    w.add_blank_page(width=595, height=842)
    if encrypt:
        w.encrypt(encrypt)
    with path.open("wb") as f:
        w.write(f)
    return path


def test_every_input_used_or_reported(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    good = (docs / "a.txt")
    good.write_text("公司2023年营业收入为10.5亿元。", encoding="utf-8")
    (docs / "b.txt").write_text("公司2023年营业收入为10.5亿元。", encoding="utf-8")  # same text: a duplicate chunk
    (docs / "empty.md").write_text(" \n", encoding="utf-8")
    (docs / "gbk.txt").write_bytes("营业收入".encode("gbk"))
    (docs / "notes.docx").write_bytes(b"PK\x03\x04")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not a pdf")
    _pdf(docs / "scan.pdf")
    _pdf(docs / "locked.pdf", encrypt="secret")
    res = extract([docs, tmp_path / "missing.txt"])
    reasons = {Path(s["path"]).name: s["reason"] for s in res.skipped}
    assert [c["id"] for c in res.chunks] == ["a#p1-c1"]
    assert res.duplicates == [{"id": "b#p1-c1", "same_as": "a#p1-c1"}]
    assert "repeat" in reasons["b.txt"]
    assert reasons["empty.md"] == "empty file"
    assert re.search(r"not UTF-8 text: byte 0x.. at byte offset \d+", reasons["gbk.txt"])
    assert "not a document type" in reasons["notes.docx"]
    assert "not a readable PDF" in reasons["broken.pdf"]
    assert "no text layer" in reasons["scan.pdf"] and "OCR" in reasons["scan.pdf"]
    assert "encrypted" in reasons["locked.pdf"]
    assert reasons["missing.txt"] == "no such file or folder"
    assert len(res.files) + len(reasons) == 9  # every file named or found is accounted for


def test_same_stem_gets_distinct_ids(tmp_path):
    for sub in ("2022", "2023"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "report.txt").write_text(f"{sub}年营业收入增长。", encoding="utf-8")
    ids = [c["id"] for c in extract([tmp_path]).chunks]
    assert len(set(ids)) == 2 and all(i.endswith("report.txt#p1-c1") for i in ids)


def test_english_hyphenation_and_wrapping(tmp_path):
    p = tmp_path / "en.txt"
    p.write_text("Revenue grew 12% as the finan-\ncial services segment expanded into\nnew markets.\n",
                 encoding="utf-8")
    (chunk,) = extract([p]).chunks
    assert chunk["text"] == "Revenue grew 12% as the financial services segment expanded into new markets."


def test_bad_sizes_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="--overlap"):
        extract([tmp_path], size=100, overlap=80)


def test_cli_reports_and_never_overwrites(tmp_path):
    out = tmp_path / "chunks.jsonl"
    r = run_data("extract", DOCS, tmp_path / "nope.pdf", "--out", out, "--json")
    assert r.code == 1, r.err  # one input skipped: a problem to look at
    rep = r.json
    assert rep["files"] == 4 and rep["skipped"] == [{"path": str(tmp_path / "nope.pdf"),
                                                     "reason": "no such file or folder"}]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == rep["chunks"] and all(re.fullmatch(r".+#p\d+-c\d+", row["id"]) for row in rows)
    assert {row["doc"].rsplit(".", 1)[1] for row in rows} == {"txt", "md", "html", "pdf"}
    before = out.read_bytes()
    again = run_data("extract", DOCS, "--out", out)
    assert again.code == 2 and "already exists" in again.err and out.read_bytes() == before
    nothing = run_data("extract", tmp_path / "nope.pdf", "--out", tmp_path / "x.jsonl")
    assert nothing.code == 2 and "no text extracted" in nothing.err and not (tmp_path / "x.jsonl").exists()
