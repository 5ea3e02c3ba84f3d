"""Run the ``sft data`` workflow commands (extract, synth, sample, review, agree, augment) in a
real subprocess, through the same error boundary as ``sft``: exit codes, stdout and stderr are
what a user sees. Built from ``sftkit.cli.data_workflow.register`` directly, so these tests do not
depend on where the commands are registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNER = (
    "from sftkit.cli.boundary import command_group\n"
    "from sftkit.cli.data_workflow import register\n"
    "app = command_group('sft data')\n"
    "register(app)\n"
    "app(prog_name='sft data')\n"
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.out.strip().splitlines()[-1])


def run_data(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    p = subprocess.run([sys.executable, "-c", RUNNER, *map(str, args)], capture_output=True, text=True,
                       check=False, env=full_env, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)
