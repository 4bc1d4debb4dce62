"""The `titk` command. Commands are thin: they parse options, call the library, and print results.

A user mistake (a TitkError) is printed as one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape

from ..errors import TitkError
from . import files, training, studies  # noqa: F401, I001  (each registers its commands on the app, in this order)
from .app import app, err_console


def main(argv: list[str] | None = None) -> None:
    try:
        result = app(args=argv, prog_name="titk", standalone_mode=False)
    except TitkError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except (click.exceptions.ClickException, typer.TyperException) as exc:  # newer typer raises its own copy of click's
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(f"[bold red]error:[/] {escape(message)}{hint}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
