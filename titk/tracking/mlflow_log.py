"""MLflow logging through explicit run ids: an experiment per study, a parent run for the study, a child run
per trial. Nothing uses MLflow's global active run, so workers and threads never step on each other.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from pathlib import Path

import pandas as pd

# A pruned trial stopped early by design: MLflow's KILLED would show it as a failure. Its run is named so.
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}
_BAD = re.compile(r"[^\w\-. /]")
MAX_PARAM = 6000
# The experiment's default view of the MLflow UI: `#/experiments/<id>?viewStateShareKey=titk`
VIEW_KEY = "titk"


def key(name: str) -> str:
    """MLflow accepts letters, digits, `_-. /` in keys, and its UI groups charts by what precedes a `/`, so
    titk uses `/` only for its sections (`intermediate/…`); `identity.similarity@identity` becomes
    `identity.similarity.identity_prompts`."""
    if "@" in name:
        name = name.replace("@", ".") + "_prompts"
    return _BAD.sub("_", name.replace(":", "."))


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri
        # titk draws its own progress; MLflow's per-artifact bars would interleave with it
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # a new store's schema set-up is routine, not news on every first sweep
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # A database error reaches titk as an exception, which it reports in one line; MLflow's own log of it
        # would print a traceback first.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        # MLflow warns about inferred schemas of every table and dataset it is given; titk's are fine.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
        self.client = MlflowClient(tracking_uri=uri)
        self._mlflow = mlflow
        self.experiment_id = self._experiment(experiment, artifact_location)

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # a training study, not a GenAI app: without the kind, MLflow 3's UI opens on its traces page
        tags = {"mlflow.experimentKind": "custom_model_development"}
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location, tags=tags)
        except MlflowException:  # another worker created it a moment ago
            return self.client.get_experiment_by_name(name).experiment_id

    def set_default_view(self, study_run: str, columns: list[tuple[str, str]], order_by: tuple[str, str] | None) -> None:
        """A shared view of the runs table (MLflow's "share" button stores the same): the trials under the
        study run expanded, with the given (kind, name) columns, kind "metrics" or "params"."""
        def column(kind: str, name: str) -> str:
            return f"{kind}.`{key(name)}`"

        state = {
            "selectedColumns": ["attributes.`Duration`", *(column(kind, name) for kind, name in columns)],
            "runsExpanded": {study_run: True},
            "orderByKey": column(*order_by) if order_by else "attributes.start_time",
            "orderByAsc": False,
        }
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))

    def study_run(self, study: str, tags: dict) -> str:
        """The study's parent run: found again on resume, created once."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`titk.role` = 'study' and tags.`titk.study` = '{study}'", max_results=1)
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"study {study}", tags={"titk.role": "study", "titk.study": study, **_tags(tags)})
        return run.info.run_id

    def start_trial(self, parent: str, number: int, tags: dict) -> str:
        return self.start_child(parent, f"trial {number}", {"titk.role": "trial", "titk.trial": str(number), "titk.state": "RUNNING", **tags})

    def start_child(self, parent: str, name: str, tags: dict) -> str:
        """A run under the study run (a trial, or a confirmation of one)."""
        return self.client.create_run(self.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent, **_tags(tags)}).info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(key(k), _text(v)[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key(k), float(v), now, int(step)) for k, v in metrics.items() if _finite(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_tags(self, run_id: str, tags: dict) -> None:
        for name, value in _tags(tags).items():
            self.client.set_tag(run_id, name, value)

    def log_scorecard(self, run_id: str, card, step: int, label: str, grid_file: str | None = None) -> None:
        """Metrics at `step`, the sample grid, the per-image table, and the scorecard. The final scorecard's
        metrics keep their names: they are the run's results in MLflow's tables; its grid is a file at the top
        of the run's artifacts (`grid_file`). Intermediate ones come from another prompt suite, so they are
        named apart (`intermediate/identity.similarity`, a chart section of their own) and their grids are
        step images."""
        self.log_metrics(run_id, card.summary if label == "final" else {f"{label}/{k}": v for k, v in card.summary.items()}, step)  # label "intermediate": registry.INTERMEDIATE
        if card.grid is not None and grid_file:
            self.client.log_image(run_id, card.grid, artifact_file=grid_file)
            if card.probe_grid is not None:  # the personality probes' own suite
                self.client.log_image(run_id, card.probe_grid, artifact_file=grid_file.replace("samples", "personality"))
        elif card.grid is not None:
            self.client.log_image(run_id, card.grid, key=f"{label}_samples", step=step)
        self.client.log_table(run_id, data=card.table, artifact_file=f"scores/{label}-step-{step:06d}.json")
        self.client.log_dict(run_id, card.to_json(), f"scorecards/{label}-step-{step:06d}.json")

    def log_files(self, run_id: str, paths: list[Path], artifact_path: str) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def log_dataset(self, run_id: str, manifest: pd.DataFrame, name: str, source: str) -> None:
        """The images the trial trained on as its MLflow dataset (so the digest tells subsets apart: MLflow's
        digest ignores a boolean column), and the whole manifest, used or not, as a table."""
        from mlflow.entities import DatasetInput, InputTag

        used = manifest[manifest["included"]].drop(columns="included").reset_index(drop=True)
        dataset = self._mlflow.data.from_pandas(used, source=source, name=name)
        self.client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])])
        self.client.log_table(run_id, data=manifest, artifact_file="dataset/manifest.json")

    def finish(self, run_id: str, state: str, reason: str | None = None) -> None:
        _finish(self.client, run_id, state, reason)


def finish_run(uri: str, run_id: str, state: str, reason: str | None = None) -> None:
    """End a trial's run from anywhere (a heartbeat callback), without a Tracker."""
    from mlflow import MlflowClient

    _finish(MlflowClient(tracking_uri=uri), run_id, state, reason)


def run_is_open(uri: str, run_id: str) -> bool:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "RUNNING"


def _finish(client, run_id: str, state: str, reason: str | None) -> None:
    tags = {"titk.state": state, **({"titk.reason": reason} if reason else {})}
    for name, value in _tags(tags).items():
        client.set_tag(run_id, name, value)
    if state == "PRUNED":
        run = client.get_run(run_id)
        client.update_run(run_id, name=f"{run.info.run_name} (pruned)")
    client.set_terminated(run_id, status=TRIAL_STATUS.get(state, "FINISHED"))


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _tags(tags: dict) -> dict:
    return {key(k): _text(v)[:5000] for k, v in tags.items()}


def _finite(value) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return v == v and v not in (float("inf"), float("-inf"))
