"""resnet-export format=onnx quantize=int8: onnxruntime's static quantisation of the float ONNX file.

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised op: the form ONNX Runtime's
execution providers, TensorRT included, fuse into integer kernels), int8 activations and
per-channel int8 weights (ONNX Runtime's recommended S8S8 default), activation ranges calibrated on
the training images TFLite's int8 calibrates on (MinMax). The file still takes uint8 images and
returns float probabilities, as the float one does.

No quant_pre_process: tf2onnx already folds batch norm into the convolutions, and the symbolic
shape inference it runs first fails on tf2onnx's graph of our model. Imported only for this export
(onnxruntime is the optional `onnx` extra).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from resnet_train.errors import UserError, first_line
from resnet_train.tools.artifacts import names_file, write_class_names
from resnet_train.tools.staged import staged

CALIBRATION_BATCH = 32


def export_int8(write_float, info, path: Path, representative) -> Path:
    """write_float(path) writes the float ONNX model (export.py's tf2onnx export); its quantised
    copy and class names are staged into place beside `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        float_model = Path(tmp) / "float.onnx"
        write_float(float_model)
        with staged(path, names_file(path)) as (temp, names):
            try:
                quantize_static(
                    str(float_model),
                    str(temp),
                    ImagesReader(representative),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                )
            except (ValueError, RuntimeError) as e:  # onnxruntime's refusals (no kernel, bad graph)
                raise UserError(f"onnxruntime could not quantise the model ({first_line(e, 300)})") from None
            write_class_names(names, info)
    return path


class ImagesReader(CalibrationDataReader):
    """The calibration images as onnxruntime's CalibrationDataReader feeds them: uint8 batches."""

    def __init__(self, images):
        images = np.asarray(images, np.uint8)
        self._batches = iter(
            [{"images": images[i : i + CALIBRATION_BATCH]} for i in range(0, len(images), CALIBRATION_BATCH)]
        )

    def get_next(self):
        return next(self._batches, None)
