"""sftkit: supervised fine-tuning, correct by construction."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes' CPU backend warns at import that the optional `kernels` package (which would fetch a
# kernel from a model hub) is missing. sftkit never fetches code implicitly, so this is noise on every command.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
