"""Checkpoints through tf.train.CheckpointManager: model, optimizer (slots, step), epoch.

The data order and augmentation are functions of (seed, epoch, step), so model + optimizer +
step is the whole state a resumed run needs (plus the epoch's running train metrics, so that a
run resumed mid-epoch reports the same epoch metrics as an uninterrupted one).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import tensorflow as tf

from resnet_train.errors import RunDirError, UserError

log = logging.getLogger(__name__)


def readable(path: str) -> str | None:
    """None when every tensor of the checkpoint at `path` reads back (sizes and checksums),
    else why not. Separates a damaged file from a checkpoint that does not fit the model."""
    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as e:  # noqa: BLE001 -- TF raises OpError, IndexError, ValueError for damage
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None


class Checkpointer:
    """Saves model + optimizer + progress (epoch, step, the epoch's running train metrics), keeps
    `max_to_keep` (>= 2, so a damaged newest one has a fallback) and restores the newest readable
    one: a damaged checkpoint is moved to checkpoints/corrupt/, never deleted."""

    def __init__(self, directory, model, optimizer, max_to_keep: int = 3, read_from=None, extra=None):
        """Saves to `directory`; resumes from `read_from` (default the same). A non-chief worker
        saves to a temporary directory but resumes from the chief's. `extra`: more trackables."""
        self.directory = Path(directory)
        self.read_from = Path(read_from or directory)
        self.max_to_keep = max_to_keep
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        # Loop steps taken, skipped float16 steps included (optimizer.iterations does not count those).
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch,
                                              step=self.step, **(extra or {}))
        self._best = None
        self._new_manager()

    def _new_manager(self):
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), self.max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    @property
    def owns_directory(self) -> bool:
        return self.read_from.resolve() == self.directory.resolve()

    def _candidates(self) -> list[str]:
        """Checkpoints newest first: those the `checkpoint` index names, and any ckpt-N on disk
        (the index itself may be the damaged file)."""
        if not self.read_from.is_dir():
            return []
        try:
            state = tf.train.get_checkpoint_state(str(self.read_from))
        except Exception:  # noqa: BLE001 -- an unparsable index: fall back to the files
            state = None
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path] if state else []
        paths = [p if Path(p).is_absolute() else str(self.read_from / p) for p in paths]
        paths += [str(f.with_suffix("")) for f in self.read_from.glob("ckpt-*.index")]
        return sorted(set(paths), key=_number, reverse=True)

    def restore_latest(self) -> bool:
        """Restores the newest readable checkpoint; True when one was restored."""
        if self.owns_directory:
            self._remove_partial_saves()
        moved = False
        for path in self._candidates():
            damage = readable(path)
            if damage is not None:
                log.warning("Checkpoint %s is damaged (%s): %s, trying the previous one", path, damage,
                            "moving it to checkpoints/corrupt/" if self.owns_directory else "skipping it")
                if self.owns_directory:
                    self._move_aside(path)
                moved = True  # (or skipped, on a worker that reads the chief's directory)
                continue
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (ValueError, AssertionError, tf.errors.OpError) as e:
                first = str(e).strip().splitlines()[0][:300]
                raise RunDirError(
                    f"the checkpoint {path} does not fit this model/optimizer ({first}); "
                    f"resume with the run's own config, or start a new run directory"
                ) from None
            if moved:
                self._new_manager()  # its list of checkpoints no longer holds the moved ones
            log.info("Resumed from %s (epoch %d, step %d)", path, int(self.epoch.numpy()), int(self.step.numpy()))
            return True
        if moved:  # there was progress, and none of it can be read: do not silently start over
            raise RunDirError(
                f"no readable checkpoint in {self.read_from} (the damaged ones are in {self.directory / 'corrupt'}): "
                f"start a new run directory" + (f", with init_from={self.read_from / 'best'} if that one is readable"
                                                if (self.read_from / "best").is_dir() else ""))
        return False

    def _move_aside(self, path: str) -> None:
        corrupt = self.directory / "corrupt"
        corrupt.mkdir(exist_ok=True)
        for f in Path(path).parent.glob(Path(path).name + ".*"):
            target = corrupt / f.name
            if target.exists():  # damaged before, at the same step: keep both
                target = corrupt / f"{f.name}.{int(time.time())}"
            f.replace(target)
        remaining = [p for p in self._candidates() if p != path and Path(p + ".index").exists()]
        names = [Path(p).name for p in sorted(remaining, key=_number)]  # relative: the run dir can move
        if names:
            tf.compat.v1.train.update_checkpoint_state(str(self.directory), names[-1],
                                                       all_model_checkpoint_paths=names)
        else:
            (self.directory / "checkpoint").unlink(missing_ok=True)

    def _remove_partial_saves(self) -> None:
        """A save killed half-way leaves <prefix>_temp/ (TF writes there, then renames): remove it."""
        for temp in [*self.directory.glob("*_temp"), *self.directory.glob("best/*_temp")]:
            shutil.rmtree(temp, ignore_errors=True)

    def save(self, step: int, epoch: int) -> str:
        self.epoch.assign(epoch)
        self.step.assign(step)
        return self._write(self.manager, step)

    def save_best(self, step: int, epoch: int, accuracy: float, best_so_far) -> bool:
        """Keeps the checkpoint with the highest eval accuracy in checkpoints/best/."""
        if best_so_far is not None and accuracy <= best_so_far:
            return False
        if self._best is None:
            self._best = tf.train.CheckpointManager(self.checkpoint, str(self.directory / "best"), max_to_keep=1)
        self.epoch.assign(epoch)
        self.step.assign(step)
        self._write(self._best, step)
        return True

    def _write(self, manager, step: int) -> str:
        """manager.save, with a full disk or an unwritable directory as one clear error. The
        checkpoint files are complete before the `checkpoint` state file names them (TF writes
        both atomically), so the earlier checkpoints stay the ones a rerun resumes from."""
        try:
            return manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            self._remove_partial_saves()
            reason = (getattr(e, "message", None) or str(e)).strip().splitlines()[0][-200:]
            raise RunDirError(
                f"could not write the checkpoint of step {step} to {manager.directory} ({reason}): free disk "
                f"space or fix the directory, then rerun the same command; it resumes from "
                f"{self.manager.latest_checkpoint or 'the start'}") from None


def _number(path: str) -> int:
    """ckpt-1200 -> 1200."""
    tail = path.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


CHOICES = "auto | best | last | PATH"


def resolve(run_dir, which: str = "auto", has_validation: bool = True) -> str:
    """The checkpoint path for `which`: auto, best (falls back to last), last, or a path (a
    checkpoint prefix or a directory holding one).

    `auto` is best/ only for a run that selected it on a validation split; a run without one is
    judged on the test set, which must not pick its own checkpoint, so `auto` is then the final one
    (the paper's protocol: the length of training fixed beforehand, the final model tested once)."""
    run_dir = Path(run_dir)
    if which == "auto":
        which = "best" if has_validation else "last"
    elif which == "best" and not has_validation and (run_dir / "checkpoints" / "best").is_dir():
        log.warning("checkpoint=best: %s chose best/ on the test set (it had no validation split), so its test "
                    "accuracy is optimistic; checkpoint=last is the unbiased one", run_dir)
    candidates = {"best": [run_dir / "checkpoints" / "best", run_dir / "checkpoints"],
                  "last": [run_dir / "checkpoints"]}.get(which, [Path(which)])
    for place in candidates:
        if place.is_dir():
            found = tf.train.latest_checkpoint(str(place))
            if found:
                return found
        elif Path(str(place) + ".index").exists():
            return str(place)
    raise UserError(f"no checkpoint ({which}) in {run_dir}: train first, or pass checkpoint={CHOICES}")
