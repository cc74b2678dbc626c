"""Export a trained run: SavedModel (serving signatures), .keras, TFLite (optionally quantised, down
to integer-only: quantize_tflite.py), ONNX (optionally int8: quantize_onnx.py), or all of them in
one table (compare.py).

Every exported model takes raw images (the normalisation is inside the model) and returns
probabilities (a softmax over the classes; under data.task=multilabel a sigmoid per class,
models/probabilities.py); the SavedModel and ONNX files also the embeddings (the pooled features). After
exporting, the artefact is loaded back and evaluated beside the original (artifacts.py). Each file
(or SavedModel folder) and its class names are written under temporary names beside their targets
and renamed into place (staged.py): a failed export leaves the previous one as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from resnet_train.data.preprocess import preprocess
from resnet_train.errors import UserError
from resnet_train.models.probabilities import probabilities, task_of
from resnet_train.tools.artifacts import (
    figures,
    in_batches,
    load_predictor,  # noqa: F401 -- imported from here by callers and tests
    names_file,
    opset_of,
    size,
    write_class_names,
)
from resnet_train.tools.embeddings import features_and_logits
from resnet_train.tools.export_job import Job, prepare
from resnet_train.tools.staged import staged

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "keras", "tflite", "onnx", "all")
# What each format can be quantised to; format=all exports every pair (compare.py).
QUANTIZE = {
    "saved_model": ("none",),
    "keras": ("none",),
    "tflite": ("none", "float16", "dynamic", "int8", "int8_full"),
    "onnx": ("none", "int8"),
}
CALIBRATION_IMAGES = 200  # training images an int8 export calibrates on (fewer if the split is smaller)


def serving_functions(model, image_shape, embeddings: bool = True, task: str = "multiclass", threshold=None):
    """(images_fn, encoded_fn, their input signatures): what the SavedModel serves. With
    `embeddings`, beside the probabilities and classes: the pooled features (embeddings.py), from
    the same pass. TFLite's export leaves them out (its reader, artifacts._tflite_predictor, picks
    the probabilities as the 2-D output that is neither classes nor labels).
    `classes` is the most probable class (under multilabel the most probable label). A multi-label
    run's `threshold` (its data.threshold) adds `labels`: 1 for every label whose probability
    reaches it, else 0 (int32, one column per class), what resnet-predict returns."""
    h, w, c = (int(v) for v in image_shape)
    both = features_and_logits(model) if embeddings else None

    def outputs(images):
        if both is None:
            probs, extra = probabilities(model(images, training=False), task), {}
        else:
            features, logits = both(images, training=False)
            probs, extra = probabilities(logits, task), {"embeddings": tf.cast(features, tf.float32)}
        if task == "multilabel" and threshold is not None:
            extra["labels"] = tf.cast(probs >= threshold, tf.int32)
        return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1), **extra}

    def images_fn(images):
        """uint8 images of the training size -> probabilities and class indices."""
        return outputs(images)

    def encoded_fn(encoded):
        """JPEG / PNG / BMP / GIF bytes of any size -> outputs, preprocessed as resnet-predict and
        evaluation do (preprocess.preprocess: resized, or resized + centre-cropped from 128 px)."""

        def one(data):
            return preprocess(data, (h, w, c))

        return outputs(tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([h, w, c], tf.uint8)))

    return (
        images_fn,
        encoded_fn,
        [tf.TensorSpec([None, h, w, c], tf.uint8, "images")],
        [tf.TensorSpec([None], tf.string, "encoded")],
    )


def export_saved_model(model, info, path: Path, threshold=None) -> Path:
    with staged(path) as (temp,):
        _write_saved_model(model, info, temp, threshold=threshold)
    return path


def _write_saved_model(model, info, path: Path, embeddings: bool = True, threshold=None) -> None:
    """Keras' ExportArchive (it tracks Keras 3 variables so that converters can freeze them)."""
    images_fn, encoded_fn, images_spec, encoded_spec = serving_functions(
        model, info.image_shape, embeddings, task_of(info), threshold
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", images_fn, input_signature=images_spec)
    archive.add_endpoint("serving_encoded", encoded_fn, input_signature=encoded_spec)
    archive.write_out(str(path), verbose=False)
    write_class_names(path / "class_names.txt", info)


def export_keras(model, info, path: Path) -> Path:
    with staged(path, names_file(path)) as (temp, names):
        model.save(str(temp))
        write_class_names(names, info)
    return path


def export_tflite(model, info, path: Path, quantize: str = "none", representative=None, source=None) -> Path:
    """`source`: the float SavedModel (tflite_source) to convert from, when one is already written
    (resnet-export's: with a multi-label run's `labels` output)."""
    import tempfile

    # Through a SavedModel written by Keras' ExportArchive: the converter then freezes the Keras 3
    # variables; from a plain concrete function they stay resource reads TFLite cannot resolve.
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            source = Path(tmp) / "saved_model"
            _write_saved_model(model, info, source, embeddings=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source), signature_keys=["serving_default"])
        return _convert(converter, info, path, quantize, representative)


def tflite_source(job: Job) -> Path:
    """The float SavedModel every TFLite file of the job converts from, written once: format=all
    converts four (none, float16, dynamic, int8), and each write cost ~3 s on 2 cores."""
    path = job.scratch / "tflite_source"
    if not path.exists():
        _write_saved_model(job.run.model, job.run.info, path, embeddings=False, threshold=job.threshold)
    return path


def _convert(converter, info, path: Path, quantize: str, representative) -> Path:
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None:
            raise UserError("quantize=int8 needs a representative dataset (training images)")
        # Weights and activations in int8; calibrated on training images. Input stays uint8
        # images and the output float probabilities, as in the other formats; an op without an
        # int8 kernel stays float (quantize=int8_full refuses such a model).
        converter.representative_dataset = lambda: ([x[None]] for x in representative)
    converted = converter.convert()
    with staged(path, names_file(path)) as (temp, names):
        temp.write_bytes(converted)
        write_class_names(names, info)
    return path


def onnx_opsets() -> range:
    """The opsets tf2onnx can write: from 13 (the oldest its 1.17 release still tests) to its newest."""
    from tf2onnx.constants import OPSET_TO_IR_VERSION

    return range(13, max(OPSET_TO_IR_VERSION) + 1)


def export_onnx(model, info, path: Path, opset: int | None = None, threshold=None) -> Path:
    """uint8 images -> probabilities and classes, as the SavedModel's serving_default.

    tf2onnx on a traced function rather than Keras' model.export(format="onnx"): Keras' export
    (tf2onnx underneath) traces the model's float32 keras.Input, not the uint8 images every other
    format takes, and offers no opset choice."""
    with staged(path, names_file(path)) as (temp, names):
        _write_onnx(model, info, temp, opset, threshold)
        write_class_names(names, info)
    return path


def _write_onnx(model, info, path: Path, opset: int | None, threshold=None) -> None:
    import tf2onnx

    images_fn, _, images_spec, _ = serving_functions(model, info.image_shape, task=task_of(info), threshold=threshold)
    traced = tf.function(images_fn, input_signature=images_spec)
    tf2onnx.convert.from_function(traced, input_signature=images_spec, opset=opset, output_path=str(path))


def check_options(fmt, quantize="none", opset=None, calibration_images=1, latency_runs=1) -> None:
    """Refuses a format, quantisation, opset or count that cannot be exported, before any work."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    every = list(dict.fromkeys(q for qs in QUANTIZE.values() for q in qs))
    if quantize not in every:
        raise UserError(f"quantize must be one of {', '.join(every)} (got {quantize!r})")
    if fmt == "all" and quantize != "none":
        raise UserError(f"format=all exports every quantisation of every format: leave out quantize={quantize}")
    if fmt != "all" and quantize not in QUANTIZE[fmt]:
        takers = " or ".join(f for f, qs in QUANTIZE.items() if quantize in qs)
        raise UserError(f"quantize={quantize} applies to format={takers} only")
    if opset is not None and fmt not in ("onnx", "all"):
        raise UserError(f"opset={opset} applies to format=onnx only")
    if calibration_images < 1:
        raise UserError(f"calibration_images must be at least 1 training image (got {calibration_images})")
    if latency_runs < 1:
        raise UserError(f"latency_runs must be at least 1 timed call (got {latency_runs})")
    if fmt not in ("onnx", "all"):
        return
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise UserError(f"format={fmt} needs tf2onnx and onnxruntime ({e}): pip install 'resnet-train[onnx]'") from e
    if opset is not None and opset not in onnx_opsets():
        opsets = onnx_opsets()
        raise UserError(f"opset must be an ONNX opset from {opsets[0]} to {opsets[-1]} (got {opset})")


def export_artifact(job: Job, fmt: str, quantize: str = "none", opset: int | None = None) -> Path:
    """Writes one export of the job's run into its folder; returns its path."""
    model, info, out = job.run.model, job.run.info, job.out_dir
    if fmt == "saved_model":
        return export_saved_model(model, info, out / "saved_model", job.threshold)
    if fmt == "keras":
        return export_keras(model, info, out / "model.keras")
    if fmt == "onnx" and quantize == "int8":
        from resnet_train.tools import quantize_onnx

        write = lambda path: _write_onnx(model, info, path, opset, job.threshold)  # noqa: E731
        return quantize_onnx.export_int8(write, info, out / "model_int8.onnx", job.representative)
    if fmt == "onnx":
        return export_onnx(model, info, out / "model.onnx", opset, job.threshold)
    path = out / ("model.tflite" if quantize == "none" else f"model_{quantize}.tflite")
    if quantize == "int8_full":
        from resnet_train.tools.quantize_tflite import export_int8_full

        return export_int8_full(model, info, path, job.representative)
    representative = job.representative if quantize == "int8" else None
    return export_tflite(model, info, path, quantize, representative, source=tflite_source(job))


def export_run(
    run_dir,
    checkpoint="auto",
    fmt="saved_model",
    quantize="none",
    out=None,
    split="test",
    batch_size=64,
    ema=None,
    opset=None,
    calibration_images=CALIBRATION_IMAGES,
    latency_runs=20,
) -> dict:
    """Exports, reloads, evaluates the exported model beside the original; returns a summary.
    A run trained with ema.decay exports its EMA weights (ema=False: the raw ones). format=all
    exports every format and quantisation and returns compare.py's table of them. Either way the
    folder's README.md, its model card (model_card.py), is written again."""
    from resnet_train.tools import model_card

    check_options(fmt, quantize, opset, calibration_images, latency_runs)
    job = prepare(run_dir, checkpoint, split, batch_size, ema, out, calibration_images)
    try:
        if fmt == "all":
            from resnet_train.tools import compare

            result = compare.compare(job, export_artifact, opset, latency_runs)
        else:
            result = summary(job, fmt, quantize, export_artifact(job, fmt, quantize, opset))
    finally:
        job.close()
    # The model card names every export in the folder, so it is rewritten after each one.
    result["card"] = str(model_card.write_card(job.run, job.out_dir, None if fmt == "all" else result))
    return result


def summary(job: Job, fmt: str, quantize: str, path: Path) -> dict:
    """An export loaded back and evaluated on the job's images beside the original."""
    exported = in_batches(load_predictor(path, fmt, job.task), job.images, job.batch_size)
    return {
        "format": fmt,
        "quantize": quantize,
        "opset": opset_of(path) if fmt == "onnx" else None,
        "weights": job.run.weights,
        "path": str(path),
        "bytes": size(path),
        "split": job.split,
        **figures(exported, job.original, job.labels, job.threshold),
    }
