"""Where results go: TensorBoard scalars, metrics.jsonl, results.json, progress bars."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import tensorflow as tf
from tqdm.auto import tqdm


class Reporter:
    """Writes each logged point to TensorBoard (tensorboard/<split>) and to metrics.jsonl."""

    def __init__(self, workdir, resumed_at: int = 0):
        """`resumed_at`: the step the run continues from; records logged after it by an earlier,
        interrupted session are dropped, so metrics.jsonl reads like one uninterrupted run."""
        self.workdir = Path(workdir)
        self._writers = {}
        path = self.workdir / "metrics.jsonl"
        records = read_metrics(self.workdir)
        kept = [r for r in records if r.get("step", 0) <= resumed_at]
        if len(kept) < len(records):
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._jsonl = open(path, "a", encoding="utf-8")

    def _writer(self, split):
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.workdir / "tensorboard" / split))
        return self._writers[split]

    def log(self, split: str, step: int, epoch: int, metrics: dict) -> None:
        with self._writer(split).as_default(step=step):
            for key, value in metrics.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value)
        record = {"split": split, "step": int(step), "epoch": int(epoch), "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def hparams(self, values: dict) -> None:
        """The run's settings for TensorBoard's HParams dashboard (metrics: eval/accuracy, eval/loss)."""
        from tensorboard.plugins.hparams import api as hp

        with self._writer(".").as_default():
            hp.hparams(values, trial_id=self.workdir.name)

    def best(self, split: str, key: str):
        """The highest `key` logged so far for `split` (earlier sessions of a resumed run included)."""
        self._jsonl.flush()
        return best_logged(self.workdir, split, key)

    def close(self) -> None:
        for w in self._writers.values():
            w.flush()
        self._jsonl.close()


def read_metrics(workdir) -> list[dict]:
    """The records of metrics.jsonl; a line cut short (a full disk, a kill mid-write) is skipped."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict)]


def best_logged(workdir, split: str, key: str, up_to_step: int | None = None):
    return max((r[key] for r in read_metrics(workdir) if r.get("split") == split and key in r
                and (up_to_step is None or r.get("step", 0) <= up_to_step)), default=None)


class NullReporter:
    """What non-chief workers report to: nothing."""

    def log(self, *args, **kwargs) -> None:
        pass

    def hparams(self, values: dict) -> None:
        pass

    def best(self, split: str, key: str):
        return None

    def close(self) -> None:
        pass


def progress(total: int, desc: str, disable: bool = False):
    """A per-epoch tqdm bar; silent when stderr is not a terminal (CI, log files)."""
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty())


def write_atomic(path, text: str) -> None:
    """Writes a temporary file beside `path`, then renames it: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json(path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
