"""Exported files written beside their target under a temporary name, then renamed into place.

A failed or killed export never leaves a truncated file (or a half-written SavedModel folder) where
a good one was: the targets change only by a rename (os.replace), once everything is written.
A folder cannot be renamed over one that exists: the old one is renamed aside, the new one in,
then the old one removed (killed between the two renames, the old export is `.<name>.old-*`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path

from resnet_train.errors import UserError, first_line
from resnet_train.report.metrics import fsync_directory


@contextlib.contextmanager
def staged(*targets: Path):
    """Yields a temporary path beside each target (same folder, so the rename is atomic; same
    suffix, which Keras' .keras writer requires). When the block succeeds they replace the
    targets; when a write fails (OSError, TensorFlow's own file errors) nothing is replaced and the
    error is one line naming the target (exit 2). The temporary files are removed either way."""
    import tensorflow as tf

    token = uuid.uuid4().hex[:8]
    temps = [t.with_name(f".{t.stem}.partial-{token}{t.suffix}") for t in targets]
    try:
        yield temps
        for temp in temps:
            _flush(temp)
        for temp, target in zip(temps, targets):
            _replace(temp, target, token)
        fsync_directory(targets[0].parent)
    except (OSError, tf.errors.OpError) as e:
        raise _failed(e, targets, temps) from None
    finally:
        for temp in temps:
            _remove(temp)


def _replace(temp: Path, target: Path, token: str) -> None:
    if not (target.is_dir() and not target.is_symlink()):
        os.replace(temp, target)
        return
    aside = target.with_name(f".{target.name}.old-{token}")
    os.replace(target, aside)
    try:
        os.replace(temp, target)
    except OSError:
        os.replace(aside, target)  # the old export back
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _flush(path: Path) -> None:
    """The written files on the disk before they replace a good export (a power loss then leaves
    the old export or the new one)."""
    for f in [*path.rglob("*")] if path.is_dir() else [path]:
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _failed(error: BaseException, targets, temps) -> UserError:
    """One line naming the target whose write failed (the temporary name mapped back to it)."""
    text = f"{getattr(error, 'filename', None) or ''} {first_line(error, None)}"
    target = next((t for t, temp in zip(targets, temps) if temp.name in text), targets[0])
    reason = getattr(error, "strerror", None) or _reason(first_line(error, None))
    kept = f"; the previous {target.name} is unchanged" if target.exists() else ""
    return UserError(f"could not write {target} ({reason}): free disk space or choose another out=DIR{kept}")


def _reason(message: str) -> str:
    """TensorFlow's "{{function_node ...}} <file>; File too large [Op:SaveV2]" -> "File too large"."""
    message = re.sub(r"\s*\[Op:\w+\]$", "", re.sub(r"^\{\{.*?\}\}\s*", "", message))
    return message.rsplit("; ", 1)[-1][-200:]
