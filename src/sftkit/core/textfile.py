"""Reading a text file a user gave (a config, a chat template, a messages file) as strict UTF-8.

A file in another encoding (latin-1, GBK) or a binary file given by mistake is a user error
with a place, not a ``UnicodeDecodeError`` traceback: the message names the file and the byte
offset (and line) of the first byte that is not UTF-8 text, or of the first NUL byte.
"""

from __future__ import annotations

from pathlib import Path


def read_text(path: str | Path, what: str, error: type[Exception]) -> str:
    """The file's text; any problem is ``error(message)``. ``what`` names the file's role ("config")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from e
    return decode(data, path, what, error)


def decode(data: bytes, path: str | Path, what: str, error: type[Exception]) -> str:
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if 0 <= nul < e.start:
            raise error(_binary(path, what, data, nul)) from None
        raise error(f"{path}: the {what} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                    f"(line {_line(data, e.start)}); save it as UTF-8") from None
    if nul >= 0:
        raise error(_binary(path, what, data, nul))
    return text


def _binary(path: str | Path, what: str, data: bytes, offset: int) -> str:
    return (f"{path}: the {what} is a binary file, not text: a NUL byte at byte offset {offset} "
            f"(line {_line(data, offset)})")


def _line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1
