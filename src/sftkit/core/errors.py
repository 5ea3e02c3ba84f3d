"""Error types the CLI turns into one clear line; kept here so catching them imports nothing heavy
(``sftkit.train.recipe`` pulls in transformers and takes seconds to import)."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""
