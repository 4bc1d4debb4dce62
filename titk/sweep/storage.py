"""Where a study lives: its Optuna storage and its MLflow tracking store, checked before any training.

One machine (default): a work directory with `optuna.journal` (Optuna's journal file storage) and
`mlflow.db` (MLflow's SQLite store) with artifacts in `mlruns/`. Many machines: `--storage postgresql://...`
(Optuna's RDB storage with a heartbeat: a trial whose worker stops beating is failed and retried) and
`--tracking-uri http://...` (an MLflow tracking server). Optuna and MLflow never share a database: both
keep an Alembic version table.

`sweep.json` records the stores so that readers find them: stores inside the work directory by their names
(a copied or moved work directory reads its own files), others by URL without a password (credentials come
from PGPASSWORD or ~/.pgpass for PostgreSQL, MLFLOW_TRACKING_USERNAME/PASSWORD for an MLflow server).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna

from ..errors import TitkError, first_line

JOURNAL = "optuna.journal"
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql", "mysql+pymysql", "mssql", "databricks")
MLFLOW_DB = "mlflow.db"


def optuna_storage(url: str | None, workdir: Path, heartbeat: int | None = None, max_retries: int = 0, on_stale=None, notify=None):
    """The study's Optuna storage; raises a one-line error if it cannot be reached. Workers give the sweep's
    heartbeat (RDB storages then fail and retry trials whose worker went silent); readers give none. A
    journal whose last record a kill or a full disk tore is repaired first, and `notify` gets one line."""
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        from .journal import repair_journal

        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / JOURNAL
        repair = repair_journal(path)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
        if repair is not None:
            _fail_torn_trials(storage, repair.trial_ids)
            (notify or _warn)(repair.message)
        return storage
    if "://" not in url:
        raise TitkError(f"--storage {url!r}: expected a database URL such as postgresql://user@host:5432/optuna or sqlite:////abs/optuna.db")
    kwargs = {}
    if heartbeat and not url.startswith("sqlite"):
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)

        def stale(study, trial):
            retry(study, trial)
            if on_stale:
                on_stale(study, trial)

        kwargs = dict(heartbeat_interval=heartbeat, grace_period=2 * heartbeat, heartbeat_stale_trial_callback=stale)
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
        storage.get_all_studies()
    except Exception as exc:  # SQLAlchemy wraps every driver error differently
        raise TitkError(f"--storage {_redact(url)}: cannot reach the database ({first_line(exc, 200)})") from None
    return storage


def _fail_torn_trials(storage, trial_ids: list[int]) -> None:
    """A trial whose record was torn did not finish as recorded: it fails, with a reason that has it retried."""
    from optuna.trial import TrialState

    for trial_id in trial_ids:
        try:
            trial = storage.get_trial(trial_id)
        except KeyError:  # the torn record was the one creating it
            continue
        if trial.state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial_id, "fail_reason", "journal record torn")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def storage_label(url: str | None, workdir: Path) -> str:
    return _redact(url) if url else str(workdir / JOURNAL)


def read_record(workdir: Path) -> dict:
    """A work directory's sweep.json, checked."""
    import json

    path = workdir / "sweep.json"
    if not path.is_file():
        raise TitkError(f"{workdir}: not a sweep work directory (no sweep.json); run `titk sweep` first")
    try:
        meta = json.loads(path.read_text())
        meta["config"]["study"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TitkError(f"{path}: not a titk sweep record (unreadable, or no config.study); run `titk sweep` again to rewrite it") from None
    return meta


def stores_record(storage_url: str | None, tracking: str | None) -> dict:
    """What sweep.json records of the stores: names inside the work directory, URLs without passwords."""
    return {"storage": public_url(storage_url) if storage_url else JOURNAL,
            "tracking_uri": public_url(tracking) if tracking else MLFLOW_DB}


def recorded_stores(workdir: Path, meta: dict) -> tuple[str | None, str | None]:
    """(storage URL or None for the work directory's journal, tracking URI or None for its mlflow.db).
    Work directories from before relative records hold absolute local paths; those mean the local stores,
    found again in the work directory wherever it now is."""
    storage, tracking = meta.get("storage") or JOURNAL, meta.get("tracking_uri") or MLFLOW_DB
    local_storage = "://" not in storage or storage.startswith("sqlite:") and storage.endswith("/" + JOURNAL)
    local_tracking = "://" not in tracking or tracking.startswith("sqlite:") and tracking.endswith("/" + MLFLOW_DB)
    return (None if local_storage else storage), (None if local_tracking else tracking)


def check_local_stores(workdir: Path, storage_url: str | None, tracking: str | None) -> None:
    """A reader never creates a store: one that is missing means a work directory copied without it."""
    for url, name in ((storage_url, JOURNAL), (tracking, MLFLOW_DB)):
        if url is None and not (workdir / name).is_file():
            raise TitkError(f"{workdir}: its {name} is missing (a work directory copied or moved without it?); "
                            "copy the whole work directory, or give --storage/--tracking-uri")


def workdir_stores(workdir: Path, storage: str | None = None, tracking: str | None = None) -> tuple[dict, str | None, str]:
    """What a reader opens for a work directory: its sweep.json, the Optuna storage URL (None for its own
    journal) and the MLflow tracking URI (its own mlflow.db, artifact paths of a moved copy pointed at it),
    each recorded one replaced by `storage`/`tracking` when given. Never creates a store."""
    meta = read_record(workdir)
    recorded_storage, recorded_tracking = recorded_stores(workdir, meta)
    storage, tracking = storage or recorded_storage, tracking or recorded_tracking
    check_local_stores(workdir, storage, tracking)
    return meta, storage, tracking or tracking_uri(None, workdir, create=False)


def public_url(url: str) -> str:
    """The URL without its password, which must never reach a file (libpq reads it from PGPASSWORD or a
    password file). An MLflow server's URL loses its user too: MLflow authenticates with
    MLFLOW_TRACKING_USERNAME/PASSWORD, never with a user in the URL."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    web = parts.scheme in ("http", "https")
    if parts.password is None and not (web and parts.username):
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{parts.username}@{host}" if parts.username and not web else host
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


def tracking_uri(uri: str | None, workdir: Path, storage_url: str | None = None, *, create: bool = True) -> str:
    """The MLflow tracking URI, checked: SQLite in the work dir by default, or a reachable server. A local
    store that was moved with its work directory has its artifact paths moved too."""
    if uri is None:
        db = workdir / MLFLOW_DB
        if db.is_file():
            from ..tracking.relocate import relocate_artifacts

            relocate_artifacts(db, workdir / "mlruns")
        elif not create:
            check_local_stores(workdir, storage_url or "", None)
        workdir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db.resolve()}"  # an absolute path: four slashes in all
    if uri.split("://", 1)[0] not in TRACKING_SCHEMES or "://" not in uri:
        raise TitkError(f"--tracking-uri {public_url(uri) if '://' in uri else uri!r}: expected an MLflow server (http://host:5000) "
                        "or a database URL (postgresql://user@host/mlflow, sqlite:////abs/mlflow.db)")
    if storage_url and _same_database(uri, storage_url):
        raise TitkError("--tracking-uri and --storage point at one database; Optuna and MLflow need separate ones")
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(public_url(uri).rstrip("/") + "/health", timeout=10) as response:
                if response.status != 200:
                    raise urllib.error.URLError(f"status {response.status}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TitkError(f"--tracking-uri {uri}: no MLflow server answers there ({getattr(exc, 'reason', exc)})") from None
    return uri


def artifact_location(uri: str, workdir: Path) -> str | None:
    """Local stores keep artifacts in the work dir; a server decides for itself."""
    return (workdir / "mlruns").resolve().as_uri() if uri.startswith("sqlite") else None


def _same_database(a: str, b: str) -> bool:
    return a.split("?")[0].rstrip("/") == b.split("?")[0].rstrip("/")


def _redact(url: str) -> str:
    return public_url(url) if "://" in url else url


def worker_identity() -> dict[str, object]:
    return {"titk.host": socket.gethostname(), "titk.pid": os.getpid()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
