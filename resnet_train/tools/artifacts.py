"""Exported files read back: a predictor per format (uint8 images -> float probabilities, through
the file's own quantisation of its input and output), their sizes, and the figures comparing an
export with the original model. Shared by resnet-export (export.py) and its table (compare.py)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

# The TFLite outputs that are never the probabilities: classes (int64), a multi-label run's labels (int32).
INDICES = (np.int64, np.int32)


def cores() -> int:
    """The CPU cores this process may use: what every runtime here is given."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def names_file(path: Path) -> Path:
    return path.with_name(path.stem + "_class_names.txt")


def write_class_names(path: Path, info) -> None:
    """Beside every exported model: one class name per line, in output order."""
    path.write_text("\n".join(info.class_names) + "\n")


def load_predictor(path: Path, fmt: str, task: str = "multiclass"):
    """images (uint8, N x H x W x C) -> probabilities (float32, N x classes). Every format but
    .keras holds its own activation; a .keras file returns logits, mapped here as the run's `task`
    says (models/probabilities.py: softmax, or a sigmoid per class under multilabel)."""
    import tensorflow as tf

    if fmt == "saved_model":
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        return lambda images: serve(images=tf.constant(images))["probabilities"].numpy()
    if fmt == "keras":
        import keras

        model = keras.saving.load_model(str(path), safe_mode=True)
        from resnet_train.models.probabilities import probabilities

        return lambda images: probabilities(model(images, training=False), task).numpy()
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cores()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda images: session.run(["probabilities"], {"images": np.asarray(images, np.uint8)})[0]
    return _tflite_predictor(path)


def _tflite_predictor(path: Path):
    # LiteRT's interpreter (tf.lite.Interpreter is deprecated, announced for removal). Its default
    # op resolver applies the XNNPACK delegate (float and int8 kernels) on the cores given.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=cores())
    (images_in,) = interpreter.get_input_details()
    # probabilities: the 2-D output that is not an index (classes: int64) nor a multi-label run's
    # `labels` (int32); float, or uint8 in an integer-only file.
    probs = next(o for o in interpreter.get_output_details() if len(o["shape"]) == 2 and o["dtype"] not in INDICES)
    allocated = [None]

    def run(images):
        if allocated[0] != images.shape:  # tensors re-allocated only when the batch shape changes
            interpreter.resize_tensor_input(images_in["index"], images.shape)
            interpreter.allocate_tensors()
            allocated[0] = images.shape
        interpreter.set_tensor(images_in["index"], quantized(images, images_in))
        interpreter.invoke()
        return dequantized(interpreter.get_tensor(probs["index"]), probs)

    return run


def quantized(images, detail) -> np.ndarray:
    """Raw uint8 pixels as the input tensor holds them: unchanged for a float model's uint8 input
    and for an integer-only one calibrated to 0..255 (scale 1, zero point 0); otherwise mapped
    through the scale and zero point calibration gave it."""
    scale, zero = detail["quantization"]
    if scale == 0 or (scale, zero) == (1.0, 0):
        return np.asarray(images).astype(detail["dtype"])
    limits = np.iinfo(detail["dtype"])
    values = np.round(np.asarray(images, np.float32) / scale + zero)
    return np.clip(values, limits.min, limits.max).astype(detail["dtype"])


def dequantized(values, detail) -> np.ndarray:
    scale, zero = detail["quantization"]
    return values.astype(np.float32) if scale == 0 else (values.astype(np.float32) - zero) * np.float32(scale)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def gzip_size(path: Path) -> int:
    """Bytes after gzip -9, file by file (a SavedModel folder: the sum of its files'): what pruning's
    zeros save in a download, which the plain size does not show."""
    return sum(len(gzip.compress(f.read_bytes(), 9, mtime=0)) for f in _files(path))


def _files(path: Path):
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def in_batches(predict, images, batch_size):
    return np.concatenate([predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def as_arrays(batches):
    """A dataset of (images, labels[, weights]) batches -> numpy arrays, weight-0 padding dropped."""
    images, labels = [], []
    for batch in batches:
        x, y, *rest = batch
        keep = rest[0].numpy() > 0 if rest else slice(None)
        images.append(x.numpy()[keep])
        labels.append(y.numpy()[keep])
    return np.concatenate(images), np.concatenate(labels)


def figures(exported, original, labels, threshold=None) -> dict:
    """An export's probabilities beside the original model's on the same labelled images
    (multi-hot labels: multilabel.export_figures at the run's threshold)."""
    if np.ndim(labels) == 2:
        from resnet_train.tools.multilabel import export_figures

        return export_figures(exported, original, labels, 0.5 if threshold is None else threshold)
    return {
        "examples": int(len(labels)),
        "accuracy": float(np.mean(exported.argmax(1) == labels)),
        "original_accuracy": float(np.mean(original.argmax(1) == labels)),
        "max_probability_difference": float(np.abs(exported - original).max()),
        "top1_agreement": float(np.mean(exported.argmax(1) == original.argmax(1))),
    }


def opset_of(path: Path) -> int:
    """The default-domain opset an ONNX file was written with (what a runtime must support)."""
    import onnx

    return next(
        o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")
    )
