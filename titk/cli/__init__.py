"""The `titk` command. Commands are thin: they parse options, call the library, and print results.

A user mistake (a TitkError) is printed as one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import errno
import sys
import warnings

import click
import typer
from rich.markup import escape

from ..errors import DiskFull, TitkError, disk_full
from . import files, training, studies  # noqa: F401, I001  (each registers its commands on the app, in this order)
from .app import app, err_console


def main(argv: list[str] | None = None) -> None:
    # Optuna flags the heartbeat callback every PostgreSQL study uses as experimental, at every start:
    # a line the user can do nothing about, above the one that matters.
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from")
    try:
        result = app(args=argv, prog_name="titk", standalone_mode=False)
    except TitkError as exc:
        _fail(exc)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except (click.exceptions.ClickException, typer.TyperException) as exc:  # newer typer raises its own copy of click's
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err_console.print(f"[bold red]error:[/] {escape(message)}{hint}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # the file system refused (a database on a full disk in its own words): one line, no traceback
        if disk_full(exc):
            _fail(DiskFull.from_error(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and exc.filename:
            _fail(TitkError(f"cannot write {exc.filename}: {exc.strerror}; choose a folder you may write to"))
        if isinstance(exc, OSError) and exc.errno in _IN_THE_WAY and exc.filename:
            _fail(TitkError(f"{exc.filename}: {_IN_THE_WAY[exc.errno]}; remove it or choose another path"))
        raise
    sys.exit(result if isinstance(result, int) else 0)


# An output folder (run, work directory, table) where a file is, or the other way round: every command
# creates its folders with mkdir(parents=True, exist_ok=True), which fails with these.
_IN_THE_WAY = {
    errno.EEXIST: "a file is in the way of a folder titk must create",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder where titk must write a file",
}


def _fail(exc: TitkError):
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
