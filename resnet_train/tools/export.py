"""Export a trained run: SavedModel (serving signatures), .keras, TFLite (optionally quantised), ONNX.

Every exported model takes raw images (the normalisation is inside the model) and returns
probabilities. After exporting, the artefact is loaded back and evaluated beside the original.
Each file (or SavedModel folder) and its class names are written under temporary names beside
their targets and renamed into place (staged.py): a failed export leaves the previous one as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from resnet_train.data.preprocess import preprocess
from resnet_train.errors import UserError
from resnet_train.tools.staged import staged

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "keras", "tflite", "onnx")
QUANTIZE = ("none", "float16", "dynamic", "int8")


def serving_functions(model, image_shape):
    """(images_fn, encoded_fn, their input signatures): what the SavedModel serves."""
    h, w, c = (int(v) for v in image_shape)

    def outputs(images):
        probs = tf.nn.softmax(model(images, training=False))
        return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1)}

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


def _write_class_names(path: Path, info) -> None:
    """Beside every exported model: one class name per line, in output order."""
    path.write_text("\n".join(info.class_names) + "\n")


def export_saved_model(model, info, path: Path) -> Path:
    with staged(path) as (temp,):
        _write_saved_model(model, info, temp)
    return path


def _write_saved_model(model, info, path: Path) -> None:
    """Keras' ExportArchive (it tracks Keras 3 variables so that converters can freeze them)."""
    images_fn, encoded_fn, images_spec, encoded_spec = serving_functions(model, info.image_shape)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", images_fn, input_signature=images_spec)
    archive.add_endpoint("serving_encoded", encoded_fn, input_signature=encoded_spec)
    archive.write_out(str(path), verbose=False)
    _write_class_names(path / "class_names.txt", info)


def _names_file(path: Path) -> Path:
    return path.with_name(path.stem + "_class_names.txt")


def export_keras(model, info, path: Path) -> Path:
    with staged(path, _names_file(path)) as (temp, names):
        model.save(str(temp))
        _write_class_names(names, info)
    return path


def export_tflite(model, info, path: Path, quantize: str = "none", representative=None) -> Path:
    import tempfile

    # Through a SavedModel written by Keras' ExportArchive: the converter then freezes the Keras 3
    # variables; from a plain concrete function they stay resource reads TFLite cannot resolve.
    with tempfile.TemporaryDirectory() as tmp:
        _write_saved_model(model, info, Path(tmp) / "saved_model")
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(Path(tmp) / "saved_model"), signature_keys=["serving_default"]
        )
        return _convert(converter, info, path, quantize, representative)


def _convert(converter, info, path: Path, quantize: str, representative) -> Path:
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None:
            raise UserError("quantize=int8 needs a representative dataset (training images)")
        # Weights and activations in int8; calibrated on training images. Input stays uint8
        # images and the output float probabilities, as in the other formats.
        converter.representative_dataset = lambda: ([x[None]] for x in representative)
    converted = converter.convert()
    with staged(path, _names_file(path)) as (temp, names):
        temp.write_bytes(converted)
        _write_class_names(names, info)
    return path


def onnx_opsets() -> range:
    """The opsets tf2onnx can write: from 13 (the oldest its 1.17 release still tests) to its newest."""
    from tf2onnx.constants import OPSET_TO_IR_VERSION

    return range(13, max(OPSET_TO_IR_VERSION) + 1)


def export_onnx(model, info, path: Path, opset: int | None = None) -> Path:
    """uint8 images -> probabilities and classes, as the SavedModel's serving_default.

    tf2onnx on a traced function rather than Keras' model.export(format="onnx"): Keras' export
    (tf2onnx underneath) traces the model's float32 keras.Input, not the uint8 images every other
    format takes, and offers no opset choice."""
    import tf2onnx

    images_fn, _, images_spec, _ = serving_functions(model, info.image_shape)
    traced = tf.function(images_fn, input_signature=images_spec)
    with staged(path, _names_file(path)) as (temp, names):
        tf2onnx.convert.from_function(traced, input_signature=images_spec, opset=opset, output_path=str(temp))
        _write_class_names(names, info)
    return path


# ---- loading exported models back, as predictors: uint8 batch -> probabilities ---------------
def load_predictor(path: Path, fmt: str):
    if fmt == "saved_model":
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        return lambda images: serve(images=tf.constant(images))["probabilities"].numpy()
    if fmt == "keras":
        model = keras.saving.load_model(str(path), safe_mode=True)
        return lambda images: tf.nn.softmax(model(images, training=False)).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images: session.run(["probabilities"], {"images": np.asarray(images, np.uint8)})[0]
    # LiteRT's interpreter: tf.lite.Interpreter is deprecated (and announced for removal).
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def run(images):
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, images.astype(np.uint8))
        interpreter.invoke()
        outputs = interpreter.get_output_details()
        probs = next(o for o in outputs if len(o["shape"]) == 2 and o["dtype"] != np.int64)
        return interpreter.get_tensor(probs["index"]).astype(np.float32)

    return run


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def check_options(fmt: str, quantize: str = "none", opset: int | None = None) -> None:
    """Refuses a format, quantisation or opset that cannot be exported, before any work."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if quantize not in QUANTIZE:
        raise UserError(f"quantize must be one of {', '.join(QUANTIZE)} (got {quantize!r})")
    if quantize != "none" and fmt != "tflite":
        raise UserError(f"quantize={quantize} applies to format=tflite only")
    if opset is not None and fmt != "onnx":
        raise UserError(f"opset={opset} applies to format=onnx only")
    if fmt != "onnx":
        return
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise UserError(f"format=onnx needs tf2onnx and onnxruntime ({e}): pip install 'resnet-train[onnx]'") from e
    if opset is not None and opset not in onnx_opsets():
        opsets = onnx_opsets()
        raise UserError(f"opset must be an ONNX opset from {opsets[0]} to {opsets[-1]} (got {opset})")


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
) -> dict:
    """Exports, reloads, evaluates the exported model beside the original; returns a summary.
    A run trained with ema.decay exports its EMA weights (ema=False: the raw ones)."""
    from resnet_train.data import pipeline
    from resnet_train.tools.evaluate import eval_split
    from resnet_train.training.runs import load_run

    check_options(fmt, quantize, opset)
    run = load_run(run_dir, checkpoint, ema)
    if run.weights == "ema":
        log.info("Exporting the moving-average (EMA) weights of %s", run.checkpoint)
    out_dir = _folder(Path(out) if out else run.run_dir / "export")
    ds, size, info = eval_split(run.cfg, run.info, None, split)
    images, labels = _as_arrays(
        pipeline.eval_batches(ds, batch_size, pipeline.eval_preprocess(info), size, info.image_shape)
    )
    if fmt == "saved_model":
        path = export_saved_model(run.model, run.info, out_dir / "saved_model")
    elif fmt == "keras":
        path = export_keras(run.model, run.info, out_dir / "model.keras")
    elif fmt == "onnx":
        path = export_onnx(run.model, run.info, out_dir / "model.onnx", opset)
    else:
        representative = None
        if quantize == "int8":
            train, _, _ = eval_split(run.cfg, run.info, None, "train")
            representative = _as_arrays(
                pipeline.eval_batches(train.take(200), batch_size, pipeline.eval_preprocess(info))
            )[0]
        suffix = "" if quantize == "none" else f"_{quantize}"
        path = export_tflite(run.model, run.info, out_dir / f"model{suffix}.tflite", quantize, representative)
    exported = _in_batches(load_predictor(path, fmt), images, batch_size)
    original = _in_batches(lambda x: tf.nn.softmax(run.model(x, training=False)).numpy(), images, batch_size)
    return {
        "format": fmt,
        "quantize": quantize,
        "opset": _opset_of(path) if fmt == "onnx" else None,
        "weights": run.weights,
        "path": str(path),
        "bytes": _size(path),
        "split": split,
        "examples": int(len(labels)),
        "accuracy": float(np.mean(exported.argmax(1) == labels)),
        "original_accuracy": float(np.mean(original.argmax(1) == labels)),
        "max_probability_difference": float(np.abs(exported - original).max()),
        "top1_agreement": float(np.mean(exported.argmax(1) == original.argmax(1))),
    }


def _folder(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the export folder {out_dir} ({e.strerror}): choose another out=DIR") from None
    return out_dir


def _in_batches(predict, images, batch_size):
    return np.concatenate([predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _opset_of(path: Path) -> int:
    """The default-domain opset an ONNX file was written with (what a runtime must support)."""
    import onnx

    return next(
        o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")
    )


def _as_arrays(batches):
    images, labels = [], []
    for batch in batches:
        x, y, *rest = batch
        keep = rest[0].numpy() > 0 if rest else slice(None)
        images.append(x.numpy()[keep])
        labels.append(y.numpy()[keep])
    return np.concatenate(images), np.concatenate(labels)
