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
