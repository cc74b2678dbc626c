"""resnet-export format=tflite quantize=int8_full: an integer-only TFLite file (what an NPU, a DSP or
a microcontroller runs), uint8 images in and uint8 probabilities out, and beside it a per-layer
error report from TFLite's QuantizationDebugger.

The converter is handed a SavedModel whose input is float32 pixels (0..255), not the uint8 images
the other formats take: from a uint8 input it keeps a float CAST (and a float tensor) before the
first quantize. Calibrated on training images that span 0..255, the uint8 input then holds the raw
pixels (scale 1, zero point 0), so an application feeds its images unchanged.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from resnet_train.errors import UserError, first_line
from resnet_train.models.probabilities import probabilities, task_of
from resnet_train.tools.artifacts import names_file, write_class_names
from resnet_train.tools.staged import staged

log = logging.getLogger(__name__)

# The report runs the debug model one image at a time with a float reference beside every layer:
# a hundred images give stable per-layer means at a fraction of the calibration's cost on big models.
REPORT_IMAGES = 100
INTEGER = (np.uint8, np.int8, np.int16, np.int32, np.int64)


def report_file(path: Path) -> Path:
    return path.with_name(path.stem + "_layers.csv")


def export_int8_full(model, info, path: Path, representative) -> Path:
    """Converts with TFLITE_BUILTINS_INT8 only, checks that no float tensor is left (one line
    naming the op otherwise), writes the file, its class names and the per-layer report."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        saved = _float_input_saved_model(model, info, Path(tmp) / "saved_model")
        converter = _converter(saved, representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        converted = _convert(converter)
        _refuse_float_tensors(converted)
        report = layer_report(_converter(saved, representative), representative[:REPORT_IMAGES])
    _warn_unless_raw_pixels(converted)
    with staged(path, names_file(path), report_file(path)) as (temp, names, layers):
        temp.write_bytes(converted)
        write_class_names(names, info)
        layers.write_text(report)
    return path


def _float_input_saved_model(model, info, path: Path) -> str:
    """Keras' ExportArchive, as export.py's: the converter can then freeze Keras 3 variables."""
    import keras
    import tensorflow as tf

    def serve(images):
        probs = probabilities(model(images, training=False), task_of(info))
        return {"probabilities": probs, "classes": tf.argmax(probs, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, *(int(v) for v in info.image_shape)], tf.float32, "images")
    archive.add_endpoint("serving_default", serve, input_signature=[spec])
    archive.write_out(str(path), verbose=False)
    return str(path)


def _converter(saved: str, representative):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in representative)
    return converter


def _convert(converter) -> bytes:
    """An op TFLite has no builtin for fails the conversion: one line naming it."""
    from tensorflow.lite.python.convert_phase import ConverterError

    try:
        return converter.convert()
    except ConverterError as e:
        why = next((str(d.error_message).splitlines()[0] for d in getattr(e, "errors", [])), first_line(e, 300))
        raise UserError(f"quantize=int8_full cannot convert this model ({why}): use quantize=int8 or none") from None


def _refuse_float_tensors(converted: bytes) -> None:
    """TFLITE_BUILTINS_INT8 alone does not refuse an op without an int8 kernel: the converter keeps
    it in float between DEQUANTIZE and QUANTIZE (seen with SIN). An integer-only file has none."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=converted)
    floats = {t["index"] for t in interpreter.get_tensor_details() if t["dtype"] not in INTEGER}
    if not floats:
        return
    # Only an op's details name it (the tensors carry layer names); TF's own debugger reads them so.
    ops = interpreter._get_ops_details()
    named = sorted({op["op_name"] for op in ops if floats & set(op["outputs"]) and op["op_name"] != "DEQUANTIZE"})
    names = [t["name"] for t in interpreter.get_tensor_details() if t["index"] in floats]
    tensor = next((n for n in names if "/" in n), names[0])  # a layer's, rather than tfl.dequantize
    raise UserError(
        f"quantize=int8_full: {', '.join(named) or 'an op'} has no integer kernel in TFLite ({tensor} would stay "
        f"float32): use quantize=int8, which keeps such ops in float"
    )


def _warn_unless_raw_pixels(converted: bytes) -> None:
    from ai_edge_litert.interpreter import Interpreter

    (images,) = Interpreter(model_content=converted).get_input_details()
    scale, zero = images["quantization"]
    if (scale, zero) != (1.0, 0):
        log.warning(
            "The calibration images do not span 0..255: the int8 model's uint8 input is pixel / %.4g + %d "
            "(feed images through that mapping)",
            scale,
            zero,
        )


def layer_report(converter, images) -> str:
    """QuantizationDebugger's per-layer statistics of the quantised model against float (CSV), with
    rmse/scale added: about 0.29 (1/sqrt(12)) is rounding alone; far above it, the layer's range or
    resolution loses information and is the one to keep in float or calibrate better."""
    import tensorflow as tf

    with warnings.catch_warnings():  # it runs tf.lite.Interpreter, which warns of its deprecation
        warnings.filterwarnings("ignore", "\\s*Warning: tf.lite.Interpreter is deprecated", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([x[None].astype(np.float32)] for x in images)
        )
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    out = io.StringIO()
    writer = csv.DictWriter(out, [*rows[0], "rmse/scale"] if rows else ["op_name"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        scale = float(row["scale"])
        row["rmse/scale"] = f"{np.sqrt(float(row['mean_squared_error'])) / scale:.4f}" if scale else ""
        writer.writerow(row)
    return out.getvalue()
