"""Repair a torn last record in Optuna's journal file before opening it.

A kill or a full disk during an append can leave the journal's last record torn: a prefix of a JSON
line with no newline. Optuna skips such a line when it reads, but appends the next record right after
the torn bytes, so the file then holds an invalid line followed by valid ones and every later load
raises. So on open we cut the torn tail off, keeping the original beside it. A bad line anywhere but
the tail is not something a crash leaves behind; we refuse to guess and ask for a backup instead.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import filelock
from optuna.storages.journal import JournalFileOpenLock

from ..errors import TitkError
from ..files import atomic_path

# Digits must be followed by something, or a cut inside "trial_id": 12 would report trial 1.
_TRIAL_ID = re.compile(rb'"trial_id"\s*:\s*(\d+)(?=\D)')


@dataclass
class JournalRepair:
    message: str
    backup: Path
    dropped_bytes: int
    trial_ids: list[int]


def repair_journal(path: Path) -> JournalRepair | None:
    """None when the file is absent or sound. Otherwise copy the file to a backup beside it (never
    overwrite an existing backup), then truncate the journal to just after its last complete, valid
    JSON line and return what was done."""
    path = Path(path)
    if not path.exists():
        return None
    # Checked first without locks, so opening a sound journal leaves no lock files behind.
    data = path.read_bytes()
    if _sound_length(path, data) == len(data):
        return None
    # The repair lock keeps two processes from both repairing; Optuna's own writer lock keeps us
    # from mistaking an append that another process has in flight for a torn record.
    with filelock.FileLock(str(path) + ".repair.lock"):
        writer = JournalFileOpenLock(str(path))
        writer.acquire()
        try:
            return _repair(path)
        finally:
            writer.release()


def _repair(path: Path) -> JournalRepair | None:
    data = path.read_bytes()  # again: another process may have repaired or finished it meanwhile
    keep = _sound_length(path, data)
    if keep == len(data):
        return None
    torn = data[keep:]
    backup = _write_backup(path, data)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data[:keep])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    trial_ids = list(dict.fromkeys(int(n) for n in _TRIAL_ID.findall(torn)))
    message = (
        f"{path.name}: its last record was torn ({len(torn)} bytes, a kill or a full disk during a write); "
        f"dropped it, the original is kept as {backup.name}"
    )
    return JournalRepair(message=message, backup=backup, dropped_bytes=len(torn), trial_ids=trial_ids)


def _sound_length(path: Path, data: bytes) -> int:
    """Length of the sound prefix: every newline-terminated line, each of which must parse."""
    keep = data.rfind(b"\n") + 1
    # Optuna appends each record with its newline in one write, so a crash leaves at most a line
    # without one at the end; a newline-terminated line that does not parse is damage of another kind.
    for number, line in enumerate(data[:keep].split(b"\n")[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            raise TitkError(
                f"{path}: line {number} is not a valid journal record, and not a torn last one; "
                f"restore the file from a backup"
            ) from None
    return keep


def _write_backup(path: Path, data: bytes) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        backup = path.with_name(f"{path.name}.torn-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            # "x" refuses an existing file, so an earlier backup is never overwritten.
            with open(backup, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return backup
        except FileExistsError:
            continue
    raise TitkError(f"{path}: cannot find a free name for its backup beside it")
