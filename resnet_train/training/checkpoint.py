"""Checkpoints through tf.train.CheckpointManager: model, optimizer (slots, step), epoch.

The data order and augmentation are functions of (seed, epoch, step), so model + optimizer +
step is the whole state a resumed run needs (plus the epoch's running train metrics, so that a
run resumed mid-epoch reports the same epoch metrics as an uninterrupted one).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import tensorflow as tf

from resnet_train.errors import RunDirError, first_line
from resnet_train.training.checkpoint_files import fsync_checkpoint, readable

log = logging.getLogger(__name__)


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
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, step=self.step, **(extra or {})
        )
        self._best = None
        self.best_set_aside = False  # best/ described steps past the restored one (see restore_latest)
        if self.owns_directory and self.directory.is_dir() and read_index(self.read_from) is DAMAGED:
            self._rewrite_index()  # else the manager cannot even start (an empty index raises in it)
        self._new_manager()

    def _new_manager(self):
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), self.max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    @property
    def owns_directory(self) -> bool:
        return self.read_from.resolve() == self.directory.resolve()

    def restore_latest(self, expect_progress: bool = False) -> bool:
        """Restores the newest readable checkpoint; True when one was restored. `expect_progress`:
        the run directory shows that training happened (metrics past step 0), so finding no
        checkpoint is refused like finding only damaged ones: never silently start over."""
        if self.owns_directory:
            self._remove_partial_saves()
        moved = False
        for path in candidates(self.read_from):
            damage = readable(path)  # raises, moving nothing, when the files cannot be reached at all
            if damage is not None:
                log.warning(
                    "Checkpoint %s is damaged (%s): %s, trying the previous one",
                    path,
                    damage,
                    "moving it to checkpoints/corrupt/" if self.owns_directory else "skipping it",
                )
                if self.owns_directory:
                    self._move_aside(path)
                moved = True  # (or skipped, on a worker that reads the chief's directory)
                continue
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (ValueError, AssertionError, tf.errors.OpError) as e:
                first = first_line(e, 300)
                raise RunDirError(
                    f"the checkpoint {path} does not fit this model/optimizer ({first}); "
                    f"resume with the run's own config, or start a new run directory"
                ) from None
            if self.owns_directory:
                self._rewrite_index()  # after a fallback or a damaged index: list what is really there
                self._new_manager()
                self._set_aside_later_best(_number(path))
            log.info("Resumed from %s (epoch %d, step %d)", path, int(self.epoch.numpy()), int(self.step.numpy()))
            return True
        corrupt = self.read_from / "corrupt"
        damaged_before = corrupt.is_dir() and any(corrupt.iterdir())
        if moved or damaged_before or expect_progress or self._best_checkpoint() is not None:
            # There was progress and none of it can be read. The same words on every rerun: the
            # first one moved the damaged files aside, and the next must not take the empty
            # directory for a new run (and overwrite its metrics and best/).
            where = f" (the damaged ones are in {corrupt})" if moved or damaged_before else ""
            best = self._best_checkpoint()
            raise RunDirError(
                f"no readable checkpoint in {self.read_from}{where}, though this run has made progress: "
                f"start a new run directory"
                + (f", with init_from={self.read_from / 'best'} if that one is readable" if best else "")
            )
        return False

    def _best_checkpoint(self) -> str | None:
        best = self.read_from / "best"
        found = (
            sorted((str(f.with_suffix("")) for f in best.glob("ckpt-*.index")), key=_number) if best.is_dir() else []
        )
        return found[-1] if found else None

    def _set_aside_later_best(self, step: int) -> None:
        """best/ saved after the restored step (a kill between save_best and save, or a fallback from
        a damaged newest checkpoint) describes an attempt the metrics no longer hold: moved aside,
        not deleted; the redone epochs choose best/ again."""
        best = self._best_checkpoint()
        if best is None or _number(best) <= step:
            return
        target = self.directory / "superseded" / f"best-{Path(best).name}"
        if target.exists():
            target = target.with_name(f"{target.name}.{int(time.time())}")
        target.parent.mkdir(exist_ok=True)
        (self.directory / "best").replace(target)
        self.best_set_aside = True
        log.warning(
            "best/ held %s, later than the resumed step %d: moved to %s (the epochs after step %d "
            "are trained again and choose best/ anew)",
            Path(best).name,
            step,
            target,
            step,
        )

    def adopt_best(self, step: int) -> bool:
        """After best/ was set aside: best/ becomes the checkpoint of `step` (the best epoch the
        metrics hold) when that one is still on disk; True when it was."""
        source = self.directory / f"ckpt-{step}"
        files = list(self.directory.glob(source.name + ".*"))
        if not files or readable(str(source)) is not None:
            log.warning(
                "The best epoch the metrics hold (step %d) has no checkpoint left: best/ is chosen again "
                "by the next better epoch",
                step,
            )
            return False
        staging = self.directory / "best_temp"  # removed as a partial save if this is interrupted
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for f in files:
            shutil.copy2(f, staging / f.name)
        tf.compat.v1.train.update_checkpoint_state(
            str(staging),
            source.name,
            all_model_checkpoint_paths=[source.name],
            all_model_checkpoint_timestamps=[time.time()],
        )
        staging.replace(self.directory / "best")
        log.info("best/ is %s again, the best epoch up to the resumed step", source.name)
        return True

    def _move_aside(self, path: str) -> None:
        corrupt = self.directory / "corrupt"
        corrupt.mkdir(exist_ok=True)
        for f in Path(path).parent.glob(Path(path).name + ".*"):
            target = corrupt / f.name
            if target.exists():  # damaged before, at the same step: keep both
                target = corrupt / f"{f.name}.{int(time.time())}"
            f.replace(target)
        self._rewrite_index()

    def _rewrite_index(self) -> None:
        """Makes the `checkpoint` index list exactly the ckpt-N on disk, oldest first, with their
        times, so that the CheckpointManager deletes the old ones again as it saves (without the
        times it keeps them forever) and `latest` names the checkpoint really resumed."""
        on_disk = sorted(
            (f.with_suffix("") for f in self.directory.glob("ckpt-*.index") if _CHECKPOINT_NAME.fullmatch(f.stem)),
            key=lambda p: _number(str(p)),
        )
        state = read_index(self.read_from)
        if (
            state not in (None, DAMAGED)
            and state.all_model_checkpoint_timestamps
            and [Path(p).name for p in state.all_model_checkpoint_paths] == [p.name for p in on_disk]
        ):
            return  # the manager's own index, as it wrote it
        if not on_disk:
            (self.directory / "checkpoint").unlink(missing_ok=True)
            return
        tf.compat.v1.train.update_checkpoint_state(
            str(self.directory),
            on_disk[-1].name,
            all_model_checkpoint_paths=[p.name for p in on_disk],
            all_model_checkpoint_timestamps=[(p.parent / (p.name + ".index")).stat().st_mtime for p in on_disk],
            last_preserved_timestamp=0.0,
        )  # relative names: the run directory can move

    def _remove_partial_saves(self) -> None:
        """A save killed half-way leaves <prefix>_temp/ (TF writes there, then renames): remove it."""
        for temp in [*self.directory.glob("*_temp"), *self.directory.glob("best/*_temp")]:
            shutil.rmtree(temp, ignore_errors=True)

    def save(self, step: int, epoch: int) -> str:
        self.epoch.assign(epoch)
        self.step.assign(step)
        return self._write(self.manager, step)

    def save_aside(self, path, step: int, epoch: int) -> str:
        """The state of `step` at `path`, outside the index and the manager's clean-up (the run
        lock was lost: another process manages this directory's checkpoints now)."""
        self.epoch.assign(epoch)
        self.step.assign(step)
        path = self.checkpoint.write(str(path))
        fsync_checkpoint(path)
        return path

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
            path = manager.save(checkpoint_number=step)
            fsync_checkpoint(path)
            return path
        except (tf.errors.OpError, OSError) as e:
            self._remove_partial_saves()
            reason = first_line(e, 200, tail=True)
            raise RunDirError(
                f"could not write the checkpoint of step {step} to {manager.directory} ({reason}): free disk "
                f"space or fix the directory, then rerun the same command; it resumes from "
                f"{self.manager.latest_checkpoint or 'the start'}"
            ) from None


def _number(path: str) -> int:
    """ckpt-1200 -> 1200."""
    tail = path.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


_CHECKPOINT_NAME = re.compile(r"ckpt-\d+")
DAMAGED = object()  # an index that exists but cannot be parsed


def inside(path: str, directory: Path) -> bool:
    """Whether a checkpoint the index names lies in `directory` (TF makes the index's relative
    names absolute under it; a name from before the run directory moved is found on disk instead)."""
    return Path(path).resolve().parent == directory.resolve()


def read_index(directory: Path):
    """The `checkpoint` index of `directory`: its state, None when there is none, DAMAGED when it
    cannot be parsed (e.g. left empty by a power loss)."""
    if not (directory / "checkpoint").exists():
        return None
    try:
        return tf.train.get_checkpoint_state(str(directory)) or DAMAGED
    except Exception:  # noqa: BLE001 -- ValueError for an empty index, OpError, ParseError
        return DAMAGED


def candidates(directory: Path) -> list[str]:
    """Checkpoints newest first: those the `checkpoint` index names, and any ckpt-N on disk (the
    index itself may be the damaged file). Only files in `directory`: an index copied or crafted to
    name another directory must not make a resume, or a tool reading the run, touch it."""
    if not directory.is_dir():
        return []
    state = read_index(directory)
    paths = (
        (list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path])
        if state not in (None, DAMAGED)
        else []
    )
    paths = [p for p in paths if inside(p, directory)]
    paths += [str(f.with_suffix("")) for f in directory.glob("ckpt-*.index")]
    return sorted(set(p for p in paths if _CHECKPOINT_NAME.fullmatch(Path(p).name)), key=_number, reverse=True)


def latest_in(directory: Path):
    """The newest checkpoint TensorFlow's index in `directory` names, or None (no folder, no index)."""
    return tf.train.latest_checkpoint(str(directory)) if directory.exists() else None
