"""Loading a study into pandas: one row per trial, learning curves, personality histograms.

From a work directory (its `sweep.json` names the storage and tracking URI) or from explicit URIs (a
PostgreSQL storage and an MLflow tracking server). Optuna holds the trial states, parameters and what each
trial recorded (its subset, mean summary, per-seed values, histograms); MLflow holds the metric histories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd

from ..errors import TitkError
from ..evaluate.registry import CURVE_METRIC, INTERMEDIATE
from ..sweep.trials import ATTRIBUTES_ATTR, measured, trials_frame


@dataclass
class StudyData:
    name: str
    study: optuna.Study
    trials: pd.DataFrame  # one row per trial
    images: list[str] = field(default_factory=list)  # every dataset image trials train on (not the held-out ones), for attribution
    tracking_uri: str | None = None
    workdir: Path | None = None

    @property
    def objectives(self) -> list[str]:
        return [c for c in ("value", "value0", "value1") if c in self.trials]

    @property
    def finished(self) -> pd.DataFrame:
        """Complete trials that trained (answers copied from an earlier trial with the same settings left out)."""
        return measured(self.trials)

    @property
    def attributes(self) -> pd.DataFrame:
        """Each dataset image's personality labels as the attribute model read them (`file`, then per label
        set the label and its probability, `<set>_p`); empty when the study measured no personality."""
        return pd.DataFrame(self.study.user_attrs.get(ATTRIBUTES_ATTR, []))

    def client(self):
        from mlflow import MlflowClient

        if not self.tracking_uri:
            raise TitkError("this study was loaded without a tracking URI")
        return MlflowClient(self.tracking_uri)

    def curves(self, metrics: tuple[str, ...] = ("train.loss", "validation.loss", INTERMEDIATE + "objective", INTERMEDIATE + CURVE_METRIC, CURVE_METRIC)) -> pd.DataFrame:
        """Metric histories of every trial from MLflow, long format: trial, metric, step, value. Intermediate
        evaluations are `intermediate/<metric>` (`intermediate/objective`: the objective on that part of the
        final suite); `<metric>` alone is the final evaluation (one step); `validation.loss` is the
        deterministic validation loss at the intermediate steps."""
        client, rows = self.client(), []
        for trial, run_id in self.trials[["trial", "mlflow_run_id"]].itertuples(index=False):
            if not isinstance(run_id, str):
                continue
            for metric in metrics:
                for m in client.get_metric_history(run_id, metric):
                    rows.append({"trial": trial, "metric": metric, "step": m.step, "value": m.value})
        table = pd.DataFrame(rows, columns=["trial", "metric", "step", "value"])
        # Trials with several seeds log each metric once per seed at the same steps: their mean is the curve.
        return table.groupby(["trial", "metric", "step"], as_index=False)["value"].mean()


def load_study(workdir: str | Path | None = None, *, study: str | None = None, storage: str | None = None, tracking_uri: str | None = None, notify=None) -> StudyData:
    from ..sweep.holdout import STUDY_ATTR as HELDOUT_ATTR
    from ..sweep.storage import optuna_storage, workdir_stores

    meta = {}
    if workdir is not None:
        workdir = Path(workdir)
        meta, storage, tracking_uri = workdir_stores(workdir, storage, tracking_uri)
        study = study or meta["config"]["study"]
    if study is None:
        raise TitkError("give a work directory, or --study with --storage and --tracking-uri")
    backend = optuna_storage(storage, workdir or Path("."), notify=notify) if (storage or workdir) else None
    if backend is None:
        raise TitkError("give a work directory or an Optuna storage URL")
    try:
        loaded = optuna.load_study(study_name=study, storage=backend)
    except KeyError:
        raise TitkError(f"study {study!r} not found in its storage") from None
    heldout = set(loaded.user_attrs.get(HELDOUT_ATTR, ()))  # identity's held-out photos: no trial trained on them
    images = [name for name in _dataset_images(meta) if name not in heldout]
    return StudyData(study, loaded, trials_frame(loaded), images, tracking_uri, workdir)


def _dataset_images(meta: dict) -> list[str]:
    from ..data.images import is_image_path

    try:
        folder = Path(meta["config"]["base"]["data"]["path"])
    except (KeyError, TypeError):
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_path(p)) if folder.is_dir() else []
