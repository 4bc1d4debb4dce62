"""A moved work directory's MLflow store, pointed at its own artifacts.

MLflow's SQLite store keeps each experiment's and run's artifact location as an absolute `file://` URI, and
has no way to store one relative to the database. A work directory that is copied or moved would go on
reading (and writing) the original's artifacts, or nothing. titk's work directories keep their artifacts in
`mlruns/` beside `mlflow.db`; when the recorded root is another folder's `mlruns`, it is rewritten to this
one's, once, in one transaction.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

# (table, column) pairs that hold artifact URIs under the experiment's root
_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


def relocate_artifacts(db: Path, mlruns: Path) -> list[str]:
    """Rewrite artifact URIs recorded under another folder's `mlruns` to `mlruns`; returns the old roots."""
    new = mlruns.resolve().as_uri()
    try:
        return _relocate(db, new)
    except sqlite3.OperationalError as exc:  # a read-only copy, or a locked database
        from ..errors import TitkError

        raise TitkError(f"{db}: cannot point its artifact paths at {mlruns} ({exc}); make the work directory writable") from None


def _relocate(db: Path, new: str) -> list[str]:
    with closing(sqlite3.connect(db)) as conn, conn:  # the inner `conn` commits once, or rolls back
        tables = {name for (name,) in conn.execute("select name from sqlite_master where type = 'table'")}
        if "experiments" not in tables:
            return []  # an empty store: MLflow creates its schema on first use
        found = conn.execute("select distinct artifact_location from experiments where artifact_location like 'file://%/mlruns'")
        old_roots = sorted(root for (root,) in found if root != new)
        for old in old_roots:
            for table, column in _COLUMNS:
                if table in tables:
                    # only URIs under the old root, matched with its trailing slash (mlruns2/ is not under mlruns/)
                    conn.execute(f"update {table} set {column} = ? || substr({column}, ?) where {column} = ? or {column} like ? escape '\\'",
                                 (new, len(old) + 1, old, _like_prefix(old + "/")))
    return old_roots


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
