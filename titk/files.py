"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    if path.is_dir():  # else the rename at the end fails, after all the work, with the temporary file's name
        from .errors import TitkError

        raise TitkError(f"{path}: is a folder; give the path of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        # Some writers (safetensors) create private 0600 files; a result is shared like any other file.
        if os.stat(tmp).st_mode & 0o077 == 0:
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file; the user needs to know which one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
