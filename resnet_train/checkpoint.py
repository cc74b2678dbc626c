"""Checkpoints through tf.train.CheckpointManager: model, optimizer (slots, step), epoch.

The data order and augmentation are functions of (seed, epoch, step), so model + optimizer +
step is the whole state a resumed run needs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from resnet_train.errors import UserError

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory, model, optimizer, max_to_keep: int = 3, read_from=None):
        """Saves to `directory`; resumes from `read_from` (default the same). A non-chief worker
        saves to a temporary directory but resumes from the chief's."""
        self.directory = Path(directory)
        self.read_from = Path(read_from or directory)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore_latest(self) -> bool:
        """Restores the newest checkpoint if there is one; True when it did."""
        path = tf.train.latest_checkpoint(str(self.read_from))
        if not path:
            return False
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0][:300]
            raise UserError(
                f"the checkpoint {path} does not fit this model/optimizer ({first}); "
                f"resume with the run's own config, or start a new run directory"
            ) from None
        log.info("Resumed from %s (epoch %d)", path, int(self.epoch.numpy()))
        return True

    def save(self, step: int, epoch: int) -> str:
        self.epoch.assign(epoch)
        return self.manager.save(checkpoint_number=step)

    def save_best(self, step: int, epoch: int, accuracy: float, best_so_far) -> bool:
        """Keeps the checkpoint with the highest eval accuracy in checkpoints/best/."""
        if best_so_far is not None and accuracy <= best_so_far:
            return False
        if not hasattr(self, "_best"):
            self._best = tf.train.CheckpointManager(self.checkpoint, str(self.directory / "best"), max_to_keep=1)
        self.epoch.assign(epoch)
        self._best.save(checkpoint_number=step)
        return True


def resolve(run_dir, which: str = "best") -> str:
    """The checkpoint path for `which`: best (falls back to last), last, or a path (a checkpoint
    prefix or a directory holding one)."""
    run_dir = Path(run_dir)
    candidates = {"best": [run_dir / "checkpoints" / "best", run_dir / "checkpoints"],
                  "last": [run_dir / "checkpoints"]}.get(which, [Path(which)])
    for place in candidates:
        if place.is_dir():
            found = tf.train.latest_checkpoint(str(place))
            if found:
                return found
        elif Path(str(place) + ".index").exists():
            return str(place)
    raise UserError(f"no checkpoint ({which}) in {run_dir}: train first, or pass checkpoint=last|best|PATH")
