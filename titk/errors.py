"""User-facing errors.

A TitkError is a mistake in the user's input (a path, a file, a setting). The CLI prints its
message as one line and exits non-zero; it never shows a traceback for one.
"""

from __future__ import annotations

import errno


class TitkError(Exception):
    """A problem the user can fix; the message says what and where, in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UnknownArchitecture(TitkError):
    """A model or file whose architecture titk does not support."""


class DiskFull(TitkError):
    """The disk (or quota) is full: nothing was half-written, and the same command resumes once space is freed."""

    exit_code = 4

    @classmethod
    def from_error(cls, exc: BaseException) -> DiskFull:
        found = _full_os_error(exc)
        where = f" writing {found.filename}" if found is not None and found.filename else ""
        what = found.strerror if found is not None else "a database reports the disk is full"
        return cls(f"disk full{where} ({what}); free some space and run the same command again: it resumes")


_FULL_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a full disk: an OSError, or a database saying so in its own words."""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cause).lower() for text in _FULL_TEXT):
            return True
    return False


def _full_os_error(exc: BaseException) -> OSError | None:
    return next((c for c in _chain(exc) if isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT)), None)


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


class TrainingDiverged(TitkError):
    """The loss became NaN or infinite; what was saved before stays valid."""

    exit_code = 3


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library's exception as the tail of titk's one-line error: its first line, cut at `limit` characters."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]
