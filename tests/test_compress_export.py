"""Integer-only TFLite (quantize=int8_full), ONNX Runtime's static int8 (format=onnx quantize=int8)
and the table of every export (format=all), on a tiny run trained here.

The table is made once for the module by resnet-export format=all in this process (the first test
that asks); the int8 files it wrote are the ones the other tests read back."""

import csv
import re

import keras
import numpy as np
import pytest
from helpers import DIGITS_RUN, compose

from resnet_train.tools.compare import ARTIFACTS, COLUMNS

FLOAT32_EXPORT_BOUND = 1e-5  # an unquantised export's largest probability difference (test_tools.py's)

# The test accuracy an int8 export may lose (or gain) against the float model on the run's 100 test
# images, and its least top-1 agreement with it. Measured by scripts/threshold_spread.py --only int8
# (this module's run, TF_ENABLE_ONEDNN_OPTS=0 and 1) on 2 cores of an AMD EPYC Zen 3 (AVX2; seeds
# 0-3): float accuracy 0.89-0.96, accuracy lost 0.00-0.01, agreement 0.99-1.00; and of an AMD EPYC
# Zen 4 (AVX512-BF16; seeds 0-4, 2026-12-08): float accuracy 0.88-0.93, accuracy lost -0.01..0.02,
# agreement 0.97-1.00 (TFLite) and 0.98-1.00 (ONNX). The same checkpoint exported twice gives the
# same figures: the spread is the training's (its oneDNN reductions are not deterministic). The
# bounds allow two images of the 100 beyond the worst seen.
INT8_ACCURACY_MARGIN = 0.04
INT8_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A ResNet-8 trained 8 epochs on 512 digits (~85% test accuracy, as test_tools.py's run)."""
    from resnet_train.training.loop import train_and_evaluate

    run = tmp_path_factory.mktemp("compress") / "run"
    train_and_evaluate(
        compose(*DIGITS_RUN, "runtime=one_device", "runtime.precision=float32"),
        run,
    )
    return run


@pytest.fixture(scope="module")
def table(small_run, tmp_path_factory):
    """table(cli) -> (CompletedProcess, export folder, CSV rows): resnet-export format=all, run once."""
    out, made = tmp_path_factory.mktemp("all"), []

    def make(cli):
        if not made:
            done = cli(f"run={small_run}", "format=all", "latency_runs=3", f"out={out}", entry="resnet-export")
            assert done.returncode == 0, done.stderr[-3000:]
            with open(out / "comparison.csv", newline="") as f:
                made.append((done, out, list(csv.DictReader(f))))
        return made[0]

    return make


def digits_test(n):
    """The first n test digits and labels (the run's test split: data.limit_test >= n)."""
    from resnet_train.data.embedded import load_digits_arrays

    _, x_test, _, y_test = load_digits_arrays()
    return x_test[:n], np.asarray(y_test[:n], dtype=np.int64)


def row(rows, fmt, quantize):
    return next(r for r in rows if (r["format"], r["quantize"]) == (fmt, quantize))


def test_format_all_writes_and_prints_one_row_per_export_with_sane_values(small_run, table, cli):
    from resnet_train.training.prune import kernel_sparsity
    from resnet_train.training.runs import load_run

    done, out, rows = table(cli)
    assert [(r["format"], r["quantize"]) for r in rows] == list(ARTIFACTS)
    assert list(rows[0]) == [c for c, _, _ in COLUMNS] + ["examples", "original_accuracy"]
    sparsity = kernel_sparsity(load_run(small_run).model)["overall"]
    for r in rows:
        name = (r["format"], r["quantize"])
        path = out / r["path"]
        assert path.exists(), name
        assert float(r["sparsity"]) == sparsity == 0.0  # trained float weights: no exact zeros
        assert 0 < int(r["gzip_bytes"]) < int(r["bytes"]), name
        assert int(r["examples"]) == 100 and 0.5 < float(r["original_accuracy"]) <= 1, name
        assert 0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["top1_agreement"]) <= 1, name
        assert 0 <= float(r["max_probability_difference"]) < 1, name
        for b in (1, 32):
            assert 0 < float(r[f"b{b}_median_ms"]) <= float(r[f"b{b}_p90_ms"]), name
        # (No order between b1 and b32: with oneDNN on, a SavedModel's batch-1 call can cost as much as
        # 32 images (32.9 vs 30.6 ms once on 2 busy Zen 3 cores; issue 35), so that order was noise.)
        if r["quantize"] == "none":  # the float exports compute what the original does
            assert float(r["max_probability_difference"]) <= FLOAT32_EXPORT_BOUND, name
            assert r["accuracy"] == r["original_accuracy"] and float(r["top1_agreement"]) == 1.0, name
    for fmt in ("tflite", "onnx"):  # int8 weights: under half the float file
        assert (
            int(row(rows, fmt, "int8" if fmt == "onnx" else "int8_full")["bytes"])
            < int(row(rows, fmt, "none")["bytes"]) / 2
        )
    # The markdown table, printed and written, with a caption naming the machine.
    markdown = (out / "comparison.md").read_text()
    assert markdown in done.stdout and f"Wrote {out / 'comparison.csv'} and {out / 'comparison.md'}" in done.stdout
    caption, _, header, _, *lines = markdown.splitlines()
    assert re.search(
        r"100 test images, original accuracy 0\.\d{4}; latency over 3 calls on \d+ cores of \S.*"
        r"\(TensorFlow's oneDNN o(n|ff)\)$",
        caption,
    )
    assert header.startswith("| format | quantize | runtime | sparsity | size | gzip | accuracy |")
    assert len(lines) == len(ARTIFACTS)


def test_the_integer_only_tflite_file_holds_only_integer_tensors_from_its_uint8_input_to_its_output(table, cli):
    """Read back from the file (the flatbuffer, not the interpreter our code runs it with)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from resnet_train.tools.export import load_predictor

    _, out, rows = table(cli)
    model = flatbuffer_utils.read_model(str(out / "model_int8_full.tflite"))
    (graph,) = model.subgraphs
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    assert {types[t.type] for t in graph.tensors} == {"UINT8", "INT8", "INT32", "INT64"}  # int32: biases, shapes
    codes = [model.operatorCodes[op.opcodeIndex] for op in graph.operators]
    used = {ops[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in codes}
    assert {"CONV_2D", "ADD", "FULLY_CONNECTED", "SOFTMAX"} <= used and "DEQUANTIZE" not in used
    images = graph.tensors[graph.inputs[0]]
    assert types[images.type] == "UINT8" and list(images.shape[1:]) == [32, 32, 3]
    # Raw pixels in: calibrated on digits that span 0..255, the input's scale is 1 and zero point 0.
    assert (list(images.quantization.scale), list(images.quantization.zeroPoint)) == ([1.0], [0])
    outputs = {graph.tensors[i].name.decode(): graph.tensors[i] for i in graph.outputs}
    probabilities = next(t for t in outputs.values() if types[t.type] == "UINT8")
    assert list(probabilities.shape[1:]) == [10] and list(probabilities.quantization.scale) == [1 / 256]
    assert {types[t.type] for t in outputs.values()} == {"UINT8", "INT64"}  # probabilities, classes
    # Fed the raw test images, its dequantised probabilities give the table's accuracy.
    x, y = digits_test(100)
    probs = load_predictor(out / "model_int8_full.tflite", "tflite")(x)
    assert np.all(np.abs(probs.sum(1) - 1) < 0.05) and np.all((probs * 256) == np.round(probs * 256))
    assert np.mean(probs.argmax(1) == y) == float(row(rows, "tflite", "int8_full")["accuracy"])
    assert (out / "model_int8_full_class_names.txt").read_text().split() == [str(i) for i in range(10)]


def test_the_per_layer_report_beside_the_file_names_every_quantised_layer(table, cli):
    """QuantizationDebugger's statistics per layer: the convolutions by their Keras names, each
    with an error that rounding alone explains in size (rmse/scale near 1/sqrt(12))."""
    _, out, _ = table(cli)
    with open(out / "model_int8_full_layers.csv", newline="") as f:
        layers = list(csv.DictReader(f))
    assert {"op_name", "tensor_name", "mean_squared_error", "max_abs_error", "scale", "rmse/scale"} <= set(layers[0])
    convs = [r for r in layers if r["op_name"] == "CONV_2D"]
    assert len(convs) == 7  # ResNet-8: the stem and 2 per block, 3 blocks
    for name in ("stem_conv", "stage1_block1_conv1", "stage2_block1_conv2", "stage3_block1_conv2"):
        assert any(name in r["tensor_name"] for r in convs), name
    assert any("logits" in r["tensor_name"] for r in layers if r["op_name"] == "FULLY_CONNECTED")
    ratios = [float(r["rmse/scale"]) for r in convs]
    assert all(0.05 < v < 2 for v in ratios), ratios


def test_int8_exports_keep_the_float_models_accuracy_within_the_measured_margin(table, cli):
    _, _, rows = table(cli)
    for fmt, quantize in (("tflite", "int8_full"), ("onnx", "int8")):
        r = row(rows, fmt, quantize)
        assert abs(float(r["accuracy"]) - float(r["original_accuracy"])) <= INT8_ACCURACY_MARGIN, (fmt, quantize)
        assert float(r["top1_agreement"]) >= INT8_AGREEMENT, (fmt, quantize)


def test_the_onnx_int8_file_is_qdq_with_per_channel_weights_and_takes_uint8_images(table, cli):
    import onnx
    from onnx import numpy_helper

    _, out, _ = table(cli)
    model = onnx.load(str(out / "model_int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 7 and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    (images,) = model.graph.input
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        weights = producers[conv.input[1]]  # DequantizeLinear(int8 weights, a scale per output channel)
        assert weights.op_type == "DequantizeLinear"
        quantised, scale = inits[weights.input[0]], inits[weights.input[1]]
        assert quantised.dtype == np.int8 and scale.shape == (quantised.shape[0],)


def test_an_op_without_an_integer_kernel_is_refused_in_one_line(small_run, tmp_path, cli, monkeypatch):
    """TFLITE_BUILTINS_INT8 alone lets SIN through in float (DEQUANTIZE, SIN, QUANTIZE): the file is
    refused; an op TFLite has no builtin for (Erf) fails the conversion itself. Nothing is written."""
    from resnet_train.training import runs

    load_run = runs.load_run

    def with_op(op):
        def load(*args, **kwargs):
            run = load_run(*args, **kwargs)
            images = keras.Input(run.model.input.shape[1:], name="images")
            run.model = keras.Model(images, keras.layers.Lambda(op)(run.model(images)), name=run.model.name)
            return run

        return load

    for op, expected in (
        (
            keras.ops.sin,
            r"quantize=int8_full: SIN has no integer kernel in TFLite \(\S*lambda\S*/Sin would stay float32\): use "
            r"quantize=int8, which keeps such ops in float",
        ),
        (
            keras.ops.erf,
            r"quantize=int8_full cannot convert this model \('tf.Erf' op is neither a custom op nor a flex op\): "
            r"use quantize=int8 or none",
        ),
    ):
        monkeypatch.setattr(runs, "load_run", with_op(op))
        args = (f"run={small_run}", "format=tflite", "quantize=int8_full", "calibration_images=16", f"out={tmp_path}")
        done = cli(*args, entry="resnet-export")
        lines = [line for line in done.stderr.splitlines() if line.startswith("resnet-export:")]
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert re.fullmatch("resnet-export: error: " + expected, lines[0]), lines[0]
        assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


def test_a_pruned_runs_rows_carry_the_sparsity_measured_in_its_weights(small_run, table, tmp_path, cli, monkeypatch):
    """Whatever made the zeros (prune.*, or here the run's kernels cut at their median magnitude):
    the rows give the fraction exported, and the gzip size shows what they save."""
    from resnet_train.tools import compare
    from resnet_train.training import runs

    dense = row(table(cli)[2], "tflite", "none")  # the table's own row, made before the patches below
    load_run, zeros = runs.load_run, []

    def pruned(*args, **kwargs):
        run = load_run(*args, **kwargs)
        for layer in run.model.layers:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                kernel = layer.kernel.numpy()
                kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0
                layer.kernel.assign(kernel)
                zeros.append((int(np.sum(kernel == 0)), kernel.size))
        return run

    monkeypatch.setattr(runs, "load_run", pruned)
    monkeypatch.setattr(compare, "ARTIFACTS", (("tflite", "none"),))  # one row is enough here
    done = cli(f"run={small_run}", "format=all", "latency_runs=1", f"out={tmp_path}", entry="resnet-export")
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "comparison.csv", newline="") as f:
        (pruned_row,) = list(csv.DictReader(f))
    measured = sum(z for z, _ in zeros) / sum(n for _, n in zeros)
    assert 0.45 < measured <= 0.5 and float(pruned_row["sparsity"]) == measured
    ratio = {r["sparsity"]: int(r["gzip_bytes"]) / int(r["bytes"]) for r in (pruned_row, dense)}
    assert ratio[pruned_row["sparsity"]] < ratio[dense["sparsity"]] - 0.2, ratio


def test_an_integer_input_calibrated_to_another_range_is_fed_through_its_scale():
    from resnet_train.tools.artifacts import dequantized, quantized

    pixels = np.array([[0, 1, 128, 255]], np.uint8)
    raw = {"dtype": np.uint8, "quantization": (1.0, 0)}
    np.testing.assert_array_equal(quantized(pixels, raw), pixels)
    narrow = {"dtype": np.int8, "quantization": (0.5, -100)}  # 0..113.5 calibrated: 255 saturates
    np.testing.assert_array_equal(quantized(pixels, narrow), [[-100, -98, 127, 127]])
    out = {"dtype": np.uint8, "quantization": (1 / 256, 0)}
    np.testing.assert_allclose(dequantized(np.array([0, 128, 255], np.uint8), out), [0, 0.5, 255 / 256])


def test_the_benchmarks_latency_rows_time_exports_as_the_table_does():
    """scripts/bench.py's latency rows (scripts/benchmarks.export_latency) on a tiny model."""
    import benchmarks  # scripts/ (conftest puts it on the path)

    results = benchmarks.export_latency(8, (8, 8, 3), runs=2, exports=(("tflite", "int8_full"), ("onnx", "int8")))
    assert set(results) == {("tflite", "int8_full"), ("onnx", "int8")}
    for r in results.values():
        assert set(r) == {"b1_median_ms", "b1_p90_ms", "b32_median_ms", "b32_p90_ms"}
        assert 0 < r["b1_median_ms"] <= r["b1_p90_ms"] and 0 < r["b32_median_ms"] <= r["b32_p90_ms"]


def test_every_tflite_file_of_one_export_converts_from_one_savedmodel_removed_at_the_end(tmp_path, monkeypatch):
    """format=all's four TFLite files (none, float16, dynamic, int8) convert from one float
    SavedModel, written once into the job's scratch folder, which close() removes."""
    from types import SimpleNamespace

    from resnet_train.tools import export
    from resnet_train.tools.export_job import Job

    written = []

    def write(model, info, path, embeddings=True, threshold=None):
        written.append((path, embeddings))
        path.mkdir(parents=True)

    monkeypatch.setattr(export, "_write_saved_model", write)
    run = SimpleNamespace(model=None, info=SimpleNamespace(task="multiclass"), cfg=None)  # (no labels output)
    job = Job(run, tmp_path, "test", 8, None, None, 1)
    sources = {export.tflite_source(job) for _ in range(4)}
    assert len(sources) == 1 and written == [(sources.pop(), False)]  # once, without the embeddings output
    scratch = job.scratch
    job.close()
    assert not scratch.exists()
