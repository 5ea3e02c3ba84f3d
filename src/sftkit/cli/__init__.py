"""The ``sft`` command: one module per command group (``cli/*.py``), one error boundary (``cli/app.py``).

``python -m sftkit.cli`` runs it (``torchrun ... -m sftkit.cli train CONFIG`` too)."""

from sftkit.cli.installation import refuse_foreign_sftkit

# Before anything imports `sftkit/__init__.py`: another project's `sftkit` may have replaced it.
refuse_foreign_sftkit()

from sftkit.cli.app import app, main  # noqa: E402

__all__ = ["app", "main"]
