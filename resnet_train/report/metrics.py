"""Where results go: TensorBoard scalars, metrics.jsonl, results.json, progress bars."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from resnet_train.errors import first_line

METRICS = Path("metrics.jsonl")  # every logged record (Reporter), in the run directory; TensorBoard has the same


def scalar_figures(metrics: dict) -> dict:
    """The figures TensorBoard and the trackers plot: the floats, and a per-class mapping's as
    "per_class_f1/<class>" (multi-label evaluation's; a class without a figure is left out)."""
    figures = {k: v for k, v in metrics.items() if isinstance(v, float)}
    for key, values in metrics.items():
        if isinstance(values, dict):
            figures.update({f"{key}/{name}": v for name, v in values.items() if isinstance(v, float)})
    return figures


class Reporter:
    """Writes each logged point to TensorBoard (tensorboard/<split>), to metrics.jsonl and, once
    committed (its step checkpointed), to the experiment trackers (report/tracking.py)."""

    def __init__(self, workdir, resumed_at: int = 0, tensorboard: bool = True, trackers=None):
        """`resumed_at`: the step the run continues from; records logged after it by an earlier,
        interrupted session are dropped, so metrics.jsonl reads like one uninterrupted run.
        `tensorboard`: False when logger leaves it out; `trackers`: tracking.Trackers, or None."""
        self.workdir = Path(workdir)
        self.tensorboard, self.trackers = tensorboard, trackers
        self._writers = {}
        self._path = self.workdir / METRICS
        self._records = [r for r in read_metrics(self.workdir) if r.get("step", 0) <= resumed_at]
        # Rewritten (atomically) unless the file is exactly its kept records: a line cut short by a
        # full disk or a kill would otherwise be glued to the next record appended.
        if self._path.exists() and self._path.read_bytes() != self._text().encode("utf-8"):
            write_atomic(self._path, self._text())
        self._jsonl = open(self._path, "ab", buffering=0)

    def _text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self._records)

    def _writer(self, split):
        import tensorflow as tf  # here, not at the top: run_dir and the sweep callback import this
        # module before the CLI imports TensorFlow quietly (cli._quiet_tensorflow)

        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.workdir / "tensorboard" / split))
        return self._writers[split]

    def log(self, split: str, step: int, epoch: int, metrics: dict) -> None:
        self.scalars(split, step, scalar_figures(metrics))
        record = {"split": split, "step": int(step), "epoch": int(epoch), "time": time.time(), **metrics}
        self._append(split, step, record)

    def scalars(self, split: str, step: int, values: dict) -> None:
        """TensorBoard only (also per-step points inside an epoch: metrics.jsonl keeps one record an epoch)."""
        import tensorflow as tf

        if not self.tensorboard:
            return
        try:
            with self._writer(split).as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(key, value)
        except tf.errors.OpError as e:  # its event file on a full disk
            raise self._event_file_error(e, split) from None

    def _append(self, split: str, step: int, record: dict) -> None:
        if any(r.get("split") == split and r.get("step") == step for r in self._records):
            # Logged again at the same step (a finished run rerun with another runtime.*, whose final
            # test record exists): replaced, never duplicated.
            self._records = [r for r in self._records if not (r.get("split") == split and r.get("step") == step)]
            self._jsonl.close()
            self._records.append(record)
            write_atomic(self._path, self._text())
            self._jsonl = open(self._path, "ab", buffering=0)
            return
        self._records.append(record)
        data = (json.dumps(record) + "\n").encode("utf-8")
        try:  # unbuffered: a failed write is not written again (by close) and names the file
            while data:
                data = data[self._jsonl.write(data) :]
            os.fsync(self._jsonl.fileno())  # once per epoch: the record survives a power loss with its checkpoint
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self._path)) from None

    def hparams(self, values: dict) -> None:
        """The run's settings for TensorBoard's HParams dashboard (metrics: eval/accuracy, eval/loss)."""
        from tensorboard.plugins.hparams import api as hp

        if not self.tensorboard:
            return
        with self._writer(".").as_default():
            hp.hparams(values, trial_id=self.workdir.name)

    def best(self, split: str, key: str):
        """The highest `key` logged so far for `split` (earlier sessions of a resumed run included)."""
        self._jsonl.flush()
        return best_logged(self.workdir, split, key)

    def _event_file_error(self, e, split: str) -> OSError:
        """TensorBoard's OpError as an OSError naming the split's event folder (train.py makes it
        the one-line "could not write <file>")."""
        return OSError(None, first_line(e, 200, tail=True), str(self.workdir / "tensorboard" / split))

    def commit(self) -> None:
        """The records so far are checkpointed: the trackers get those they have not had."""
        if self.trackers is not None:
            self.trackers.send(self._records)

    def finish(self, results: dict, files) -> None:
        """The run's results and its pictures, to the trackers."""
        if self.trackers is not None:
            self.commit()
            self.trackers.finish(results, files)

    def close(self, status: str = "KILLED") -> None:
        """status, for the trackers: FINISHED, KILLED (to be continued) or FAILED."""
        import tensorflow as tf

        try:
            for split, w in self._writers.items():
                try:
                    w.flush()
                except tf.errors.OpError as e:
                    raise self._event_file_error(e, split) from None
        finally:
            self._jsonl.close()
            if self.trackers is not None:
                self.trackers.close(status)


def read_metrics(workdir) -> list[dict]:
    """The records of metrics.jsonl; a line cut short (a full disk, a kill mid-write) is skipped."""
    path = Path(workdir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict)]


def _logged(workdir, split: str, key: str, up_to_step: int | None) -> list[dict]:
    return [
        r
        for r in read_metrics(workdir)
        if r.get("split") == split and key in r and (up_to_step is None or r.get("step", 0) <= up_to_step)
    ]


def best_logged(workdir, split: str, key: str, up_to_step: int | None = None):
    return max((r[key] for r in _logged(workdir, split, key, up_to_step)), default=None)


def best_logged_step(workdir, split: str, key: str, up_to_step: int | None = None) -> int | None:
    """The step of the first record with the highest `key` (save_best keeps the first of equals)."""
    logged = _logged(workdir, split, key, up_to_step)
    return max(logged, key=lambda r: r[key])["step"] if logged else None


class NullReporter:
    """What non-chief workers report to: nothing."""

    def log(self, *args, **kwargs) -> None:
        pass

    def hparams(self, values: dict) -> None:
        pass

    def scalars(self, *args, **kwargs) -> None:
        pass

    def best(self, split: str, key: str):
        return None

    def commit(self) -> None:
        pass

    def finish(self, results: dict, files) -> None:
        pass

    def close(self, status: str = "KILLED") -> None:
        pass


def progress(total: int, desc: str, disable: bool = False):
    """A per-epoch tqdm bar; silent when stderr is not a terminal (CI, log files)."""
    return tqdm(
        total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, disable=disable or not sys.stderr.isatty()
    )


def write_atomic(path, text: str) -> None:
    """Writes a temporary file beside `path`, flushes it to the disk, then renames it and flushes
    the directory: never a half-written file, and after a power loss either the old or the new
    one. The temporary name is unique, so concurrent writers (sweep members) do not collide."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:  # a write through an open file names no file: name the one meant
        raise OSError(e.errno, e.strerror, e.filename or str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def fsync_directory(directory) -> None:
    """Makes a rename in `directory` durable (POSIX: the entry lives in the directory's data)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename itself is done
        pass
    finally:
        os.close(fd)


def write_json(path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def hparams_of(cfg, dataset: str) -> dict:
    """The settings a sweep varies, flat, for TensorBoard's HParams dashboard (`dataset`: its name)."""
    from omegaconf import OmegaConf

    flat = {
        "depth": cfg.depth,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "data": dataset,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "schedule": cfg.schedule.name,
        "precision": cfg.runtime.precision,
    }
    for section in ("augment", "model", "optimizer", "schedule"):
        for key, value in OmegaConf.to_container(cfg[section], resolve=True).items():
            if isinstance(value, (bool, int, float, str)):
                flat[f"{section}.{key}"] = value
    return {k: v for k, v in flat.items() if isinstance(v, (bool, int, float, str))}
