"""The ``sft`` command: one module per command group (``cli/*.py``), one error boundary (``cli/app.py``).

``python -m sftkit.cli`` runs it (``torchrun ... -m sftkit.cli train CONFIG`` too)."""

from sftkit.cli.app import app, main

__all__ = ["app", "main"]
