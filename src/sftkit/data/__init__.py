"""Data: every common SFT layout in, clean conversations out, nothing silently lost.

Entry points::

    from sftkit.data import load_file, LoadResult, Reject, write_rejects

    from sftkit.core.errors import DataError
    res = load_file("train.jsonl")            # layout detected from the rows
    res.conversations, res.rejects, res.total  # valid + rejected == total

See docs/data.md for the layouts, the ``columns=`` keys and every reject reason.
"""

from sftkit.core.errors import DataError
from sftkit.core.vocab import CANONICAL, LAYOUTS
from sftkit.data.load import load_file, load_files
from sftkit.data.types import LoadResult, OnError, Reject
from sftkit.data.validate import enforce, fold_rendered, write_rejects

__all__ = [
    "CANONICAL",
    "LAYOUTS",
    "DataError",
    "LoadResult",
    "OnError",
    "Reject",
    "enforce",
    "fold_rendered",
    "load_file",
    "load_files",
    "write_rejects",
]
