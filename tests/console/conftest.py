"""Console test fixtures: small Chinese data files and a real uvicorn server on a free port.
No mocks: runs train the tiny model in real subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from console_helpers import TOKEN, LiveConsole, rows, write_jsonl


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """train.jsonl (32 rows; one broken line in bad.jsonl), test.jsonl (8 held-out rows)."""
    write_jsonl(tmp_path / "train.jsonl", rows(32))
    write_jsonl(tmp_path / "test.jsonl", rows(8, start=100))
    write_jsonl(tmp_path / "bad.jsonl", rows(3), extra='{"messages": [{"role": "user", "content": "没有回答"}]}\n')
    return tmp_path


@pytest.fixture
def readable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    """The console reads only its own folders (and --allow ones): the tests' tiny model is built
    under pytest's base temp folder, outside each test's workdir."""
    return (tmp_path_factory.getbasetemp(),)


@pytest.fixture
def live(workdir: Path, readable: tuple[Path, ...]) -> Iterator[LiveConsole]:
    with LiveConsole(workdir / "runs", workdir, allow=readable) as srv:
        yield srv


@pytest.fixture
def live_token(workdir: Path, readable: tuple[Path, ...]) -> Iterator[LiveConsole]:
    with LiveConsole(workdir / "runs", workdir, token=TOKEN, allow=readable) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _modest_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training subprocesses inherit this: two runs at once share the machine's cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
