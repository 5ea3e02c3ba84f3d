"""Documents -> raw page texts, for ``sft data extract``.

One function per kind of file; each returns the pages' texts (page 1 first) or raises
``Unusable`` with the reason a person can act on (not UTF-8, encrypted, no text layer).
Text files keep form feeds as page breaks, so a text dump of a paginated report stays
page-aware. HTML drops what a reader never sees as content (scripts, styles, navigation).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from sftkit.core.textfile import decode

DOC_TYPES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
# Elements whose text is not document content.
_SKIP = {"script", "style", "nav", "noscript", "template", "svg", "head", "button", "form", "footer"}
# Elements that end a line of text (the rest flow inline).
_BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
          "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "dd", "dt", "caption", "main", "hr"}


_CELL = "\x1f"  # marks a table cell start until the row is assembled


class Unusable(Exception):
    """A file that yields no text; the message is the reason."""


def read_pages(path: Path) -> list[str]:
    """The raw text of each page of ``path`` (by its extension)."""
    suffix = path.suffix.lower()
    if suffix not in DOC_TYPES:
        raise Unusable(f"not a document type sftkit reads ({' '.join(DOC_TYPES)})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Unusable(f"cannot read ({e.strerror})") from None
    if not data.strip():
        raise Unusable("empty file")
    if suffix == ".pdf":
        return _pdf_pages(path)
    text = _utf8(data, path)
    if suffix in (".html", ".htm"):
        return [html_text(text)]
    if suffix in (".md", ".markdown"):
        text = markdown_text(text)
    return text.split("\f")


def _utf8(data: bytes, path: Path) -> str:
    try:
        return decode(data, path, "document", Unusable).removeprefix("\ufeff")
    except Unusable as e:  # the message already names the file: keep the reason only
        raise Unusable(str(e).removeprefix(f"{path}: ")) from None


def _pdf_pages(path: Path) -> list[str]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise Unusable("reading PDF needs the pypdf package: pip install pypdf") from None
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unusable("the PDF is encrypted with a password; save an unprotected copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise Unusable(f"not a readable PDF ({type(e).__name__}: {e})") from None
    if not any(p.strip() for p in pages):
        raise Unusable(f"the PDF has no text layer ({len(pages)} pages of images, a scan?): "
                       "run OCR first (e.g. ocrmypdf) and extract the result")
    return pages


class _HTMLText(HTMLParser):
    """Collects the visible text of a page, one line per block element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping.append(tag)
        elif tag in _BLOCK:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(_CELL)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:  # <br/>: a void element never opens a skipped region
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skipping and tag == self.skipping[-1]:
            self.skipping.pop()
        elif tag in _BLOCK and not self.skipping:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data))  # source newlines are layout, not text


def html_text(html: str) -> str:
    """Visible text of an HTML page, a paragraph per block element."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    lines = [line.strip().strip(_CELL).replace(_CELL, " | ") for line in "".join(parser.parts).split("\n")]
    return "\n\n".join(line for line in lines if line)


_MD_RULES = [
    (re.compile(r"^```.*$|^~~~.*$", re.M), ""),  # code fences (their content stays)
    (re.compile(r"^\s{0,3}>\s?", re.M), ""),  # block quotes
    (re.compile(r"^\s{0,3}#{1,6}\s*(.*)$", re.M), "\n\\1\n"),  # a heading: its own paragraph
    (re.compile(r"^\s*\|?\s*:?-{3,}.*$", re.M), ""),  # table separator rows |---|---|
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> their text
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),  # bold
    (re.compile(r"<[^>\n]+>"), ""),  # inline HTML tags
]


def markdown_text(md: str) -> str:
    """Markdown with its markup removed; a table row becomes its cells separated by " | ".
    Each heading becomes its own paragraph: headings end without punctuation, so the line
    joining in ``clean`` would otherwise glue them to the text below."""
    for pattern, repl in _MD_RULES:
        md = pattern.sub(repl, md)
    rows = []
    for line in md.split("\n"):
        cells = line.strip()
        # A table row is a paragraph of its own: rows have no punctuation to end them.
        is_row = cells.startswith("|")
        rows.append(" | ".join(c.strip() for c in cells.strip("|").split("|")) + "\n" if is_row else line)
    return "\n".join(rows)
