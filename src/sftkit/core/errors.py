"""Every error a user can fix, under one base: ``SftkitError``.

The message is one or a few sentences: what is wrong, where (file:line, config key, path), and
what to do. The CLI prints any ``SftkitError`` the same way (``error: MESSAGE``) and exits with
its ``exit_code`` (2: the input was refused); the console and the server turn them into 4xx JSON.
Anything else that escapes is a bug in sftkit, and is shown as a traceback.

Each class also derives from the builtin it always was (``ValueError`` for bad input,
``RuntimeError`` for a state of the machine), so code that caught those keeps working.
The classes live here, not beside the code that raises them, so that catching one never
imports anything heavy.
"""

from __future__ import annotations


class SftkitError(Exception):
    """A problem the user can fix; ``str(e)`` says what, where, and what to do."""

    exit_code = 2


# -- inputs the user wrote --------------------------------------------------------------------


class UsageError(SftkitError, ValueError):
    """A command-line value that cannot be used (a size, a share, a name, a file that is not there)."""


class ConfigError(SftkitError, ValueError):
    """A config that cannot be used; the message names the file, line, key and fix."""


class DataError(SftkitError, ValueError):
    """A fatal data problem (unreadable file, unknown or mixed layout, a reject under
    ``on_error="fail"``)."""


class TemplateError(SftkitError, ValueError):
    """A chat template that cannot render a conversation (with the reason and the row)."""


class RowRejected(TemplateError):
    """This one row cannot be used (too long under ``drop``, nothing left to train after
    truncation); it is reported and the run goes on."""


class TemplateBlocked(TemplateError):
    """The template itself is refused: it reached for Python internals, or a render went over
    its time or size budget (``templates/sandbox.py``). Never a bad row to skip."""


class RefusedPath(SftkitError, ValueError):
    """An output path that would destroy or alter something that is not the command's own."""


# -- models and files from elsewhere ------------------------------------------------------------


class ModelNotFound(SftkitError, RuntimeError):
    """The reference names no model available on this machine."""


class SourceUnavailable(ModelNotFound):
    """A hub reference that cannot be served from here (offline, not cached, package missing)."""


class Untrusted(SftkitError, ValueError):
    """A file that would run code (pickle, shipped Python) without the user's consent."""


class UnsafeWeights(Untrusted):
    """Weights that would be unpickled without the user's consent."""


class UntrustedCode(Untrusted):
    """A model that only loads by running the Python code shipped with it."""


# -- the machine ------------------------------------------------------------------------------


class MethodUnavailable(SftkitError, RuntimeError):
    """The method needs a backend this machine does not have."""


class AcceleratorUnavailable(MethodUnavailable):
    """A switch needs hardware or a package this machine does not have."""


class DeviceUnavailable(SftkitError, RuntimeError):
    """The device asked for (``--device cuda``) is not on this machine."""


class TeacherError(SftkitError, RuntimeError):
    """A teacher model (``sft data synth --teacher URL``) cannot be reached or refuses; the message
    names the URL and what to check."""


class DoesNotFit(SftkitError, RuntimeError):
    """The run's estimated peak exceeds the device memory; ``.estimate`` holds the numbers."""

    def __init__(self, message: str, est: object = None) -> None:
        super().__init__(message)
        self.estimate = est


# -- runs -------------------------------------------------------------------------------------


class TrainError(SftkitError, RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class RunDirError(TrainError):
    """Training may not use this folder; the message says why and which flag or folder to use."""


class ExportError(SftkitError, RuntimeError):
    """The run cannot be exported."""


class VerificationFailed(ExportError):
    """The exported model does not reproduce the run's outputs; it is kept aside, unverified."""

    exit_code = 1


class GgufNotWritten(ExportError):
    """The model folder was exported and verified, but no GGUF file could be written."""

    exit_code = 3
