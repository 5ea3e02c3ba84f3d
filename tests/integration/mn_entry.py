"""``python mn_entry.py ARGS`` = ``sft ARGS`` with trainlib's ``KILL_AT`` fault installed (tests only):
torchrun and DeepSpeed's launcher start it as the script of every rank of a "node"."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for trainlib

import trainlib

kind, _, k = os.environ.get("KILL_AT", "").partition(":")
if kind:
    trainlib.TRIGGERS[kind](int(k or -1))

from sftkit.cli import main  # noqa: E402

sys.argv = ["sft", *sys.argv[1:]]
main()
