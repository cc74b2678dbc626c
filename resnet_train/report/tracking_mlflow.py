"""logger=mlflow: one MLflow run per run directory, through MlflowClient (no process-wide active
run, so sweep members in one process and Optuna trials each keep their own)."""

from __future__ import annotations

import os
import time
from pathlib import Path

MAX_PARAM = 6000  # MLflow's limit on a parameter's value, in characters
BATCH = 100  # MLflow's limit on parameters per log_batch call


def default_uri() -> str:
    return (Path.cwd() / "mlruns").as_uri()


class MlflowTracker:
    DURABLE = True  # log_batch returns once the store has the values
    HINT = "; check mlflow.tracking_uri (null: a local file store, ./mlruns)"

    def __init__(self, settings, workdir: Path, saved: dict | None, config: dict, flat: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = settings.tracking_uri or default_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked: the
            # local store is what users of a laptop or a cluster's shared disk get by default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.uri = MlflowClient(tracking_uri=uri), uri
        run = self._existing(saved)
        if run is None:
            experiment = self.client.get_experiment_by_name(settings.experiment)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(settings.experiment)
            )
            run = self.client.create_run(experiment_id, run_name=str(workdir), tags={"run_dir": str(workdir.resolve())})
            params = [Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(flat.items())]
            for start in range(0, len(params), BATCH):  # once: MLflow refuses a parameter's change
                self.client.log_batch(run.info.run_id, params=params[start : start + BATCH])
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id

    def _existing(self, saved: dict | None):
        """The run tracking.json names, when it is in this store and not deleted."""
        if not saved or saved.get("tracking_uri") != self.uri:
            return None
        try:
            run = self.client.get_run(saved["id"])
        except Exception:  # noqa: BLE001 -- MlflowException: not in this store (deleted, another store)
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def identity(self) -> dict:
        return {"id": self.run_id, "tracking_uri": self.uri, "experiment_id": self.experiment_id}

    def where(self) -> str:
        return f"run {self.run_id} in {self.uri}"

    def log(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, int(step)) for k, v in values.items()])

    def results(self, numbers: dict, results: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(results.get("steps", 0))
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers.items()])
        self.client.log_dict(self.run_id, results, "results.json")

    def file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
