"""Data that fails while a run reads it: one line naming the file (and the record), not a traceback.

Start-up checks what is cheap to check: a folder's files are all decoded once (unreadable ones
skipped and named), TFRecords are read once for their labels (every record parsed, CRCs checked).
Whatever fails later -- a streamed file deleted or rewritten after that check, a TFRecord whose
image does not decode -- surfaces as a TensorFlow error from the input pipeline inside a compiled
training or evaluation call. Its message names the file when reading failed (NotFoundError), not
when decoding did, and the seeded order makes every rerun fail at the same place; so `explain`
looks for the culprit (`Splits.locate`: a pass over the source's files) and names it.

The TFRecord label scan does not decode the images, and start-up stays a read of the labels. Measured
on an AMD EPYC (2 cores, shared): 2000 records of 32x32 JPEG, label scan 160-180 ms, this module's
decode pass 240-440 ms; 500 records of 320x240 JPEG (21 MB), 112 ms against 730 ms, ~1.2 ms per
image more, which grows with the images: ImageNet's 1.28M JPEGs would add most of an hour to every
start on such a machine. The decode pass runs only after a failure.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import tensorflow as tf

from resnet_train.data.info import displayable
from resnet_train.errors import DataError, first_line

log = logging.getLogger(__name__)

# What the input pipeline raises for a file that cannot be read or an image that does not decode.
INPUT_ERRORS = (
    tf.errors.InvalidArgumentError,
    tf.errors.NotFoundError,
    tf.errors.DataLossError,
    tf.errors.PermissionDeniedError,
)
_PREFIX = re.compile(r"^Error in user-defined function passed to .*? transformation with iterator: \S+: ")


def is_input_error(error: BaseException) -> bool:
    """An error of the input pipeline (tf.data, iterated inside a compiled call), not of the model."""
    message = getattr(error, "message", None) or str(error)
    return isinstance(error, INPUT_ERRORS) and ("Iterator" in message or "ReadFile" in message)


def reason(error: BaseException) -> str:
    """TF's own line about what failed ("<path>; No such file or directory", "Unknown image file
    format ..."), without the graph's node names and the iterator's chain."""
    message = getattr(error, "message", None) or str(error)
    lines = [
        line.strip()
        for line in message.splitlines()
        if line.strip()
        and not line.strip().startswith("[[")
        and not line.startswith(("Detected at node", "<stack traces", "Graph execution error"))
    ]
    line = _PREFIX.sub("", lines[-1]) if lines else first_line(error)
    return displayable(line)[:300]


def explain(error: BaseException, splits, step: int, latest: str | None) -> DataError | None:
    """The one-line error for data that failed mid-run (None: `error` is not the data's). `latest`:
    the run's newest checkpoint, which a rerun resumes from once the data is fixed."""
    if not is_input_error(error):
        return None
    what = reason(error)
    kept = f"the run's checkpoints are kept (a rerun resumes from {latest})" if latest else "nothing was saved yet"
    found = None
    if splits.locate is not None:
        log.info("The data failed after step %d (%s): looking for the file (a pass over the data)", step, what)
        found = splits.locate()
    if found is None:
        return DataError(
            f"the data failed to read after step {step} ({what}); {kept}: fix or replace what it names, then "
            f"rerun the same command"
        )
    path, record, why = found
    where = f"{displayable(path)}, record {record}" if record is not None else displayable(path)
    fix = (
        "rewrite that record, or leave the file out of data.train_files / data.eval_files (a new run)"
        if record is not None
        else "put the file back or replace it with a readable image (the run was counted with it)"
    )
    detail = f"after step {step}" + ("" if displayable(path) in what else f": {what}")  # TF's line may name it
    return DataError(f"{where}: {why} ({detail}); {kept}: {fix}, then rerun the same command")


def first_unreadable_file(paths, image_shape) -> tuple[str, None, str] | None:
    """(path, None, why) of the first of a streamed folder's files that is gone or no longer
    decodes, else None: the start-up check's own decoder (files.decode_files), again."""
    from resnet_train.data.files import decode_files

    paths = [os.fsdecode(p) for p in paths]
    for path in paths:
        if not os.path.isfile(path):
            return path, None, "the file is gone since the start-up check"
    decoded = decode_files(paths, image_shape, "the streamed files again", keep=False)
    bad = np.flatnonzero(~decoded.ok)
    return (paths[bad[0]], None, "the file no longer reads as an image") if len(bad) else None


def first_bad_record(files, image_key: str) -> tuple[str, int | None, str] | None:
    """(file, record index, why) of the first TFRecord whose image does not decode, in the order of
    `files` (each file's records decoded in parallel; failures dropped and spotted by index)."""
    from resnet_train.data.preprocess import decode

    features = {image_key: tf.io.FixedLenFeature([], tf.string)}

    def check(index, record):
        image = decode(tf.io.parse_single_example(record, features)[image_key])
        return index, tf.shape(image)[0]  # the decoded shape: the decode is not pruned away

    for path in files:
        if not os.path.isfile(path):
            return path, None, "the file is gone since the start-up check"
        ds = tf.data.TFRecordDataset(path).enumerate().map(check, num_parallel_calls=tf.data.AUTOTUNE)
        expected = 0
        try:
            for index, _ in ds.ignore_errors().batch(4096).as_numpy_iterator():
                gaps = np.flatnonzero(index != np.arange(expected, expected + len(index)))
                if len(gaps):
                    return path, int(expected + gaps[0]), "its image does not decode"
                expected += len(index)
        except tf.errors.OpError as e:  # the file itself no longer reads
            return path, expected, f"it no longer reads ({first_line(e, 120)})"
        if expected < _records(path):
            return path, expected, "its image does not decode"
    return None


def _records(path) -> int:
    return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
