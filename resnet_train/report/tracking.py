"""Experiment trackers (logger=[mlflow, wandb]): the config as params, each epoch's records, the
final results and the run's pictures, in one tracked run per run directory.

The tracked run's id is kept in the run directory (tracking.json), so a resumed or requeued run
continues the same tracked run. A record reaches the trackers only once the checkpoint of its step
is written (Reporter.commit), and tracking.json lists the records each tracked run has kept: a
session killed after an epoch's records but before its checkpoint redoes that epoch without a
second value at the same step, and one killed after the checkpoint but before sending sends them
at its next start. MLflow has a record once log_batch returns; W&B only once its run is finished
(its service buffers the transaction log, and a SIGKILLed session leaves it empty: measured with
wandb 0.31 offline), so a W&B session killed outright has its records sent again by the next one
(the same values at the same steps, which W&B's monotonic steps keep once).

MLflow also skips the steps its run already holds (read back at the start of a continued run), so
a session killed between log_batch and tracking.json's update sends nothing twice either.

The run's end (results, pictures, FINISHED) counts once each tracker is closed: tracking.json says
so ("finished"), and a finished run whose process ended before that gets it when rerun (complete).
A tracked run belongs to one run directory: tracking.json records the directory's path and a
random token, so a moved directory continues its tracked runs and a copy starts its own (owned).

A tracker that fails during training is reported once and switched off for the session: the run
goes on (its records stay in metrics.jsonl and are sent at the next start)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path

from resnet_train.errors import UserError, first_line
from resnet_train.report import redact
from resnet_train.report.metrics import write_json

log = logging.getLogger(__name__)

# In the run directory: {"directory": {"token", "path"}, tracker: {its run's id ..., "sent": [...], "finished"}}
TRACKING = Path("tracking.json")
TRACKERS = ("mlflow", "wandb")  # each needs its package, from the pip extra of the same name


def check_installed(loggers) -> None:
    """Refuses a tracker whose package is missing, before any work."""
    for name in loggers:
        if name in TRACKERS:
            try:
                _import(name)  # imported for the run anyway
            except ImportError as e:
                raise UserError(
                    f"logger={name} needs the {name} package ({e}): pip install 'resnet-train[{name}]'"
                ) from None


def _import(name: str) -> None:
    if name == "mlflow":
        import mlflow  # noqa: F401
    elif name == "wandb":
        import wandb  # noqa: F401


def open_trackers(cfg, workdir: Path, names=None) -> Trackers:
    """The trackers cfg.logger names (or `names`), each continuing the tracked run tracking.json
    names, if it belongs to this directory. They get the config with its secrets redacted."""
    from resnet_train.config import flatten

    names = list(cfg.logger if names is None else names)
    check_installed(names)
    saved = owned(_read(workdir), workdir)
    config = redact.config(cfg)
    opened = {}
    for name in names:
        if name == "mlflow":
            from resnet_train.report.tracking_mlflow import MlflowTracker as kind
        elif name == "wandb":
            from resnet_train.report.tracking_wandb import WandbTracker as kind
        else:
            continue
        try:
            opened[name] = kind(cfg[name], workdir, saved.get(name), config, flatten(config))
        except Exception as e:  # noqa: BLE001 -- each library's own errors: an unreachable server, no login
            for tracker in opened.values():
                tracker.close("FAILED")
            message = f"logger={name} could not start its run: {first_line(e, 300)}{kind.HINT}"
            raise UserError(redact.uri(message)) from None
        log.info("Tracking with %s: %s", name, opened[name].where())
    return Trackers(workdir, opened, saved)


def owned(saved: dict, workdir: Path) -> dict:
    """tracking.json's content when its tracked runs belong to `workdir`, else {} (new ones). They
    do when it was recorded here, or when the directory it was recorded in no longer holds it (the
    directory was moved); a copy (the original still holds the same token) starts its own."""
    mark, here = saved.get("directory"), str(workdir.resolve())
    if not isinstance(mark, dict) or not isinstance(mark.get("path"), str) or mark["path"] == here:
        return saved  # (recorded here, or before directories were recorded)
    original = _read(Path(mark["path"])).get("directory")
    if isinstance(original, dict) and original.get("token") == mark.get("token"):
        log.info("%s is a copy of %s: it starts tracked runs of its own", here, mark["path"])
        return {}
    log.info("%s was moved from %s: its tracked runs continue", here, mark["path"])
    return saved


def incomplete(cfg, workdir: Path) -> list[str]:
    """The trackers cfg.logger names that have not had the end of this (finished) run: tracking.json
    does not say them finished (their process ended after results.json, before closing them)."""
    saved = _read(workdir)
    return [
        name
        for name in cfg.logger
        if name in TRACKERS  # (runs made before the mark have none: taken as done)
        and (not isinstance(saved.get(name), dict) or saved[name].get("finished") is False)
    ]


def complete(cfg, workdir: Path, results: dict, files, lock) -> None:
    """A finished run's trackers that `incomplete` names get what they lack, under the run's lock
    (`lock(workdir)`, a context manager): the records of metrics.jsonl, the results, `files` (in
    workdir), then FINISHED. One that cannot start is a warning: the run is finished either way,
    and its next rerun tries again."""
    if not incomplete(cfg, workdir):
        return
    try:
        with lock(workdir):
            _complete(cfg, workdir, results, [workdir / name for name in files])
    except (UserError, OSError) as e:  # the lock: another process holds the directory; a read-only one
        log.warning("%s; the trackers get the run's end when it is rerun", redact.uri(first_line(e, 300)))


def _complete(cfg, workdir: Path, results: dict, files: list[Path]) -> None:
    from resnet_train.report.metrics import read_metrics

    names = incomplete(cfg, workdir)  # again, under the lock
    if not names:
        return
    log.info("The run's trackers (%s) did not get its end: sending it now", ", ".join(names))
    try:
        trackers = open_trackers(cfg, workdir, names)
    except UserError as e:
        log.warning("%s; the run's results stay in results.json and are sent when it is rerun", e)
        return
    status = "FAILED"
    try:
        trackers.send(read_metrics(workdir))
        trackers.finish(results, files)
        status = "FINISHED"
    finally:
        trackers.close(status)


def _read(workdir: Path) -> dict:
    try:
        saved = json.loads((workdir / TRACKING).read_text())
    except (OSError, ValueError):  # none yet, or damaged: new tracked runs
        return {}
    return saved if isinstance(saved, dict) else {}


def record_key(record: dict) -> str:
    return f"{record['split']}@{record['step']}"


class Trackers:
    """Sends the records, results and files to every open tracker; keeps tracking.json."""

    def __init__(self, workdir: Path, trackers: dict, saved: dict):
        self.workdir, self.trackers = workdir, trackers
        mark = saved.get("directory")
        token = mark.get("token") if isinstance(mark, dict) and mark.get("token") else uuid.uuid4().hex
        self.directory = {"token": token, "path": str(workdir.resolve())}
        self.finished = dict.fromkeys(trackers, False)  # closed FINISHED: the run's end delivered
        self.kept = {}  # what each tracked run has for sure (tracking.json's "sent")
        for name, tracker in trackers.items():
            old = saved.get(name) or {}
            continued = old.get("id") == tracker.identity()["id"]
            self.kept[name] = set(old.get("sent", [])) if continued else set()
        self.sent = {name: set(kept) for name, kept in self.kept.items()}  # and in this session
        if trackers:
            self._save()

    def send(self, records: list[dict]) -> None:
        """Every record the trackers have not had yet, in step order."""
        if not self.trackers:
            return
        for name, tracker in list(self.trackers.items()):
            new = [r for r in records if record_key(r) not in self.sent[name]]
            if not new:
                continue
            try:
                for record in sorted(new, key=lambda r: r["step"]):
                    tracker.log(record["step"], _numbers(record))
            except Exception as e:  # noqa: BLE001 -- the training goes on without this tracker
                self._drop(name, e)
                continue
            self.sent[name].update(record_key(r) for r in new)
            if tracker.DURABLE:
                self.kept[name] = set(self.sent[name])
        self._save()

    def finish(self, results: dict, files: list[Path]) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.results(_flat_numbers(results), results)
                for path in files:
                    if path.exists():
                        tracker.file(path)
            except Exception as e:  # noqa: BLE001
                self._drop(name, e)

    def close(self, status: str) -> None:
        """status: FINISHED, KILLED (stopped, to be continued) or FAILED."""
        for name, tracker in self.trackers.items():
            try:
                tracker.close(status)
                self.kept[name] = set(self.sent[name])  # flushed by the close
                self.finished[name] = status == "FINISHED"
            except Exception as e:  # noqa: BLE001
                log.warning("logger=%s: could not close its run (%s)", name, redact.uri(first_line(e, 200)))
        if self.trackers:
            self._save()
        self.trackers = {}

    def _drop(self, name: str, error: Exception) -> None:
        log.warning(
            "logger=%s failed (%s): no more records go there in this session; they stay in metrics.jsonl "
            "and are sent when the run is continued",
            name,
            redact.uri(first_line(error, 300)),
        )
        tracker = self.trackers.pop(name)
        try:
            tracker.close("FAILED")
        except Exception:  # noqa: BLE001 -- already failing
            pass

    def _save(self) -> None:
        saved = _read(self.workdir)
        mark = saved.get("directory")
        if isinstance(mark, dict) and mark.get("token") != self.directory["token"]:
            saved = {}  # a copy's first save: the original's tracked runs are not this directory's
        saved["directory"] = self.directory
        for name, tracker in self.trackers.items():
            saved[name] = {**tracker.identity(), "sent": sorted(self.kept[name]), "finished": self.finished[name]}
        write_json(self.workdir / TRACKING, saved)


def _numbers(record: dict) -> dict:
    """A record's figures under <split>/<name>, and its epoch."""
    values = {f"{record['split']}/{k}": float(v) for k, v in record.items() if _is_number(v) and k not in _NOT_METRICS}
    values["epoch"] = float(record["epoch"])
    return values


_NOT_METRICS = ("split", "step", "epoch", "time")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flat_numbers(results: dict, prefix: str = "results/") -> dict:
    flat = {}
    for key, value in results.items():
        key = _UNNAMEABLE.sub("_", str(key))  # a multi-label run's per-class figures are keyed by class name
        if isinstance(value, dict):
            flat.update(_flat_numbers(value, f"{prefix}{key}/"))
        elif _is_number(value):
            flat[f"{prefix}{key}"] = float(value)
    return flat


_UNNAMEABLE = re.compile(r"[^\w./\- :]")  # what MLflow refuses in a metric's name
