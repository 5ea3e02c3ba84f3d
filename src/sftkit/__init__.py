"""sftkit: supervised fine-tuning, correct by construction."""

__version__ = "0.1.0"
