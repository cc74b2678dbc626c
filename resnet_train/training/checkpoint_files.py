"""A checkpoint's files: read back in full, to tell damage (moved aside, the previous checkpoint
tried) from storage that cannot be reached (nothing moved), and flushed to the disk once written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import tensorflow as tf

from resnet_train.errors import RunDirError, first_line
from resnet_train.report.metrics import fsync_directory


def readable(path: str) -> str | None:
    """None when every tensor of the checkpoint at `path` reads back (sizes and checksums),
    else why not. Separates a damaged file from a checkpoint that does not fit the model.
    Raises CheckpointUnreachable when the files could not be read at all (permissions, a storage
    or network file system error): that says nothing about the checkpoint, so nothing is moved."""
    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as e:  # noqa: BLE001 -- TF raises OpError, IndexError, ValueError for damage
        why = first_line(e, 200)
        if storage_error(e):
            raise CheckpointUnreachable(
                f"could not read the checkpoint {path} ({type(e).__name__}: {why}): a permission or storage "
                f"error, not damage, so nothing was moved; fix access to {Path(path).parent} (or wait for the "
                f"file system) and rerun the same command"
            ) from None
        return why
    return None


class CheckpointUnreachable(RunDirError):
    """A checkpoint's files could not be read for a reason outside them (EACCES, EIO, ESTALE...)."""


# TF maps errno to these codes (EACCES/EPERM: PermissionDenied, ESTALE: Aborted, ENOMEM/ENOSPC:
# ResourceExhausted, EAGAIN/ECONNRESET: Unavailable, ETIMEDOUT: DeadlineExceeded); EIO has no code
# of its own (Unknown) and is recognised by its text. Damage shows as DataLoss, OutOfRange,
# InvalidArgument or NotFound (a missing shard), which are not here.
_STORAGE_OP_ERRORS = (
    tf.errors.PermissionDeniedError,
    tf.errors.ResourceExhaustedError,
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
)
_STORAGE_ERRNOS = (
    errno.EIO,
    errno.ESTALE,
    errno.EACCES,
    errno.EPERM,
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ENOMEM,
    errno.EBUSY,
    errno.EINTR,
    errno.ENOTCONN,
    errno.EREMOTEIO,
    errno.ENOLCK,
)


def storage_error(e: BaseException) -> bool:
    if isinstance(e, (*_STORAGE_OP_ERRORS, MemoryError)):
        return True
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        return True
    text = str(e)
    return isinstance(e, (tf.errors.UnknownError, OSError)) and any(os.strerror(n) in text for n in _STORAGE_ERRNOS)


def fsync_checkpoint(path: str) -> None:
    """TF closes a checkpoint's files without flushing them to the disk: after a power loss the
    newest one could be empty although the index names it. Flushed here, with the index and the
    directory, so that the checkpoint a rerun resumes from is the last one saved."""
    prefix = Path(path)
    for f in [*prefix.parent.glob(prefix.name + ".*"), prefix.parent / "checkpoint"]:
        try:
            fd = os.open(f, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_directory(prefix.parent)
