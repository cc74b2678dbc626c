"""logger=mlflow: one MLflow run per run directory, through MlflowClient (no process-wide active
run, so sweep members in one process and Optuna trials each keep their own)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from resnet_train.report import redact

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
        if _file_store(uri):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked: the
            # local store is what users of a laptop or a cluster's shared disk get by default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # The URI's password never leaves the client: tracking.json, the log and errors get it as ***.
        with _creating(uri):  # a new file store's client writes its Default experiment: one at a time
            self.client, self.uri = MlflowClient(tracking_uri=uri), redact.uri(uri)
        here = str(workdir.resolve())
        run = self._existing(saved, uri)
        self.held = {}  # metric key -> the steps the run has: what a killed session sent is not sent twice
        if run is None:
            experiment_id = _experiment_id(self.client, settings.experiment, uri)
            run = self.client.create_run(experiment_id, run_name=str(workdir), tags={"run_dir": here})
            params = [Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(flat.items())]
            for start in range(0, len(params), BATCH):  # once: MLflow refuses a parameter's change
                self.client.log_batch(run.info.run_id, params=params[start : start + BATCH])
        else:
            self.held = {
                key: {m.step for m in self.client.get_metric_history(run.info.run_id, key)} for key in run.data.metrics
            }
            if run.data.tags.get("run_dir") != here:  # the directory was moved: the run follows it
                self.client.set_tag(run.info.run_id, "run_dir", here)
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id

    def _existing(self, saved: dict | None, uri: str):
        """The run tracking.json names, when it is in this store and not deleted."""
        if not saved or saved.get("tracking_uri") not in (self.uri, uri):
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
        self._metrics(int(step), values)

    def _metrics(self, step: int, values: dict) -> None:
        """The values at `step` the run does not hold yet."""
        from mlflow.entities import Metric

        new = {k: v for k, v in values.items() if step not in self.held.get(k, ())}
        if new:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in new.items()])
        for key in new:
            self.held.setdefault(key, set()).add(step)

    def results(self, numbers: dict, results: dict) -> None:
        self._metrics(int(results.get("steps", 0)), numbers)
        self.client.log_dict(self.run_id, results, "results.json")

    def file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def _file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def _experiment_id(client, name: str, uri: str) -> str:
    """The experiment's id, created when missing. Parallel sweep members race to create it: the
    losers (RESOURCE_ALREADY_EXISTS) look it up again, meanwhile written in full."""
    from mlflow.exceptions import MlflowException

    with _creating(uri):
        for wait in (0.1, 0.2, 0.4, 0.8, 1.6, None):
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            try:
                return client.create_experiment(name)
            except MlflowException as e:  # another process created it since the lookup
                if e.error_code != "RESOURCE_ALREADY_EXISTS" or wait is None:
                    raise
            time.sleep(wait)


@contextlib.contextmanager
def _creating(uri: str):
    """A local file store: one process at a time looks up and creates the experiment. MLflow's file
    store checks the name and then writes the experiment, so processes that check together create
    two experiments of one name (or see one half written); a server's database refuses the second."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: the lookup again is all
        yield
        return
    if not _file_store(uri):
        yield
        return
    from mlflow.utils.file_utils import local_file_uri_to_path

    root = Path(local_file_uri_to_path(uri))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".experiments.lock", "a") as lock:  # a file: the store lists folders only
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
