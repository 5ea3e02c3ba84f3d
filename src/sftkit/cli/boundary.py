"""The one error boundary of the ``sft`` command.

Every command raises ``SftkitError`` (``sftkit.core.errors``) for a problem the user can fix;
this group class prints it as one line (``error: MESSAGE``) and exits with its code (2). A file
the operating system refuses (``OSError``: missing, unreadable, disk full) is one line and exit 2
too, and Ctrl-C is exit 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from sftkit.core.errors import SftkitError

err = Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")


class Boundary(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SftkitError as e:
            error(str(e))
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e) or type(e).__name__)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            error(str(e) or "interrupted")
            raise typer.Exit(130) from None


def command_group(help: str) -> typer.Typer:
    """A Typer app whose commands all go through the boundary."""
    return typer.Typer(cls=Boundary, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)
