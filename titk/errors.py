"""User-facing errors.

A TitkError is a mistake in the user's input (a path, a file, a setting). The CLI prints its
message as one line and exits non-zero; it never shows a traceback for one.
"""


class TitkError(Exception):
    """A problem the user can fix; the message says what and where, in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UnknownArchitecture(TitkError):
    """A model or file whose architecture titk does not support."""


class TrainingDiverged(TitkError):
    """The loss became NaN or infinite; what was saved before stays valid."""

    exit_code = 3
