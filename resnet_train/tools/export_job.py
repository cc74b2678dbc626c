"""A run loaded for export (export.py): its model, the labelled images every export of it is
evaluated on, the original model's probabilities on them, and the training images int8 exports
calibrate on, each computed once however many exports (format=all) use it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from resnet_train.errors import UserError
from resnet_train.models.probabilities import probabilities, task_of
from resnet_train.tools.artifacts import as_arrays, in_batches

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A run loaded for export, with the labelled images every export of it is measured on."""

    run: object  # training.runs.LoadedRun
    out_dir: Path
    split: str
    batch_size: int
    images: np.ndarray
    labels: np.ndarray
    calibration_images: int

    @cached_property
    def scratch(self) -> Path:
        """A temporary folder for what several exports of this job share (the float SavedModel
        format=all's four TFLite files convert from); removed by close()."""
        import tempfile

        self._scratch = tempfile.TemporaryDirectory(prefix="resnet-export-")
        return Path(self._scratch.name)

    def close(self) -> None:
        if "scratch" in self.__dict__:
            self._scratch.cleanup()
            del self.__dict__["scratch"]

    @property
    def task(self) -> str:
        return task_of(self.run.info)

    @cached_property
    def threshold(self) -> float | None:
        """A multi-label run's data.threshold (exact-match accuracy's); None for multiclass."""
        from resnet_train.tools.multilabel import threshold_for

        return threshold_for(self.run.cfg, self.run.info)

    @cached_property
    def original(self) -> np.ndarray:
        """The run's own model's probabilities on `images`: what every export is compared with."""
        model, task = self.run.model, self.task
        return in_batches(lambda x: probabilities(model(x, training=False), task).numpy(), self.images, self.batch_size)

    @cached_property
    def representative(self) -> np.ndarray:
        """The first calibration_images training images (fewer if the split is smaller), as
        evaluation sees them (no augmentation): every int8 export calibrates on these."""
        from resnet_train.data import pipeline
        from resnet_train.tools.evaluate import eval_split

        train, _, info = eval_split(self.run.cfg, self.run.info, None, "train")
        batches = pipeline.eval_batches(
            train.take(self.calibration_images), self.batch_size, pipeline.eval_preprocess(info)
        )
        images = as_arrays(batches)[0]
        log.info("Calibrating on %d training images", len(images))
        return images


def prepare(run_dir, checkpoint, split, batch_size, ema, out, calibration_images) -> Job:
    from resnet_train.data import pipeline
    from resnet_train.tools.evaluate import eval_split
    from resnet_train.training.runs import load_run

    run = load_run(run_dir, checkpoint, ema)
    if run.weights == "ema":
        log.info("Exporting the moving-average (EMA) weights of %s", run.checkpoint)
    out_dir = _folder(Path(out) if out else run.run_dir / "export")
    ds, count, info = eval_split(run.cfg, run.info, None, split)
    images, labels = as_arrays(
        pipeline.eval_batches(ds, batch_size, pipeline.eval_preprocess(info), count, info.image_shape)
    )
    return Job(run, out_dir, split, batch_size, images, labels, calibration_images)


def _folder(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the export folder {out_dir} ({e.strerror}): choose another out=DIR") from None
    return out_dir
