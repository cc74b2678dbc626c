"""Embeddings: the pooled features (the global-average-pool output the classifier reads) of a
trained model, for resnet-predict output=embeddings (an .npz or a .parquet file with the file
names) and for the SavedModel / ONNX exports' `embeddings` output (export.serving_functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resnet_train.errors import UserError
from resnet_train.models import names

SUFFIXES = (".npz", ".parquet")


def features_and_logits(model):
    """A keras.Model sharing `model`'s layers: images -> (pooled features, logits), one pass."""
    import keras

    try:
        pool = model.get_layer(names.POOL)
    except ValueError:
        raise UserError(f"{model.name} has no {names.POOL!r} layer: its embeddings cannot be read") from None
    return keras.Model(model.input, [pool.output, model.output], name=f"{model.name}_embeddings")


def check_out(path) -> Path:
    """The embeddings file asked for: .npz, or .parquet with pyarrow installed; refused in one line
    before any image is read."""
    path = Path(str(path)).expanduser()
    if path.suffix not in SUFFIXES:
        raise UserError(f"out={path} must end in .npz (NumPy) or .parquet (Parquet) for output=embeddings")
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError(
                f"out={path}: writing Parquet needs pyarrow (pip install pyarrow), or name an .npz file"
            ) from None
    return path


def embed_files(run, paths, batch_size: int = 64):
    """(embeddings float32 N x D, the files read in order, [(path, reason)] of those that failed)."""
    import tensorflow as tf

    from resnet_train.training.runs import load_images

    images, ok, failed = load_images(paths, run.info)
    both = features_and_logits(run.model)
    width = int(both.outputs[0].shape[-1])
    chunks = [
        tf.cast(both(images[i : i + batch_size], training=False)[0], tf.float32).numpy()
        for i in range(0, len(ok), batch_size)
    ]
    return (np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)), ok, failed


def write(path: Path, embeddings: np.ndarray, files) -> Path:
    """Written under a temporary name beside `path`, then renamed into place (staged.py)."""
    from resnet_train.tools.staged import staged

    files = [str(f) for f in files]
    with staged(path) as (temp,):
        if path.suffix == ".npz":
            with open(temp, "wb") as f:  # a file object: np.savez would append .npz to the name
                np.savez(f, embeddings=embeddings, files=np.asarray(files, dtype=str))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            width = embeddings.shape[1]
            column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), width)
            pq.write_table(pa.table({"file": pa.array(files, pa.string()), "embedding": column}), temp)
    return path


def read(path) -> tuple[np.ndarray, list[str]]:
    """(embeddings, file names) back from either format."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            return data["embeddings"], [str(f) for f in data["files"]]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return np.asarray(table.column("embedding").to_pylist(), np.float32), table.column("file").to_pylist()
