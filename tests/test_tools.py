"""resnet-eval, -predict, -export, -explain, -plot through their CLIs, on a tiny run made here.

Each console script runs once as a process of its own, where the suite checks its exit code (the
cheapest such case per tool); every other call runs its entry point in this process (conftest's
`cli`), without TensorFlow's start-up of several seconds per call."""

import json
import re
import sys
from pathlib import Path

import keras
import launches
import numpy as np
import pytest
import tensorflow as tf
from helpers import DIGITS_RUN, ROOT, compose
from PIL import Image

BIN = Path(sys.executable).parent


def tool(name, *args, timeout=300):
    return launches.run([str(BIN / name), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def digits_test(n):
    """The first n test digits and labels (the run's test split with data.limit_test >= n)."""
    from resnet_train.data.embedded import load_digits_arrays

    _, x_test, _, y_test = load_digits_arrays()
    return x_test[:n], np.asarray(y_test[:n], dtype=np.int64)


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return Image.open(path).size


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ResNet-8 trained 8 epochs on 512 digits (~85% test accuracy: predictions can be checked
    against labels), without a validation split."""
    from resnet_train.training.loop import train_and_evaluate

    # In this process: the tools read .hydra/config.yaml, dataset.json, metrics.jsonl and the
    # checkpoints, which train_and_evaluate writes as the resnet-train CLI does (the CLI adds only
    # its overrides.yaml and train.log, which no tool reads).
    run = tmp_path_factory.mktemp("tools") / "run"
    train_and_evaluate(
        compose(*DIGITS_RUN, "runtime.precision=float32"),
        run,
    )
    return run


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Three digit scans saved as files (PNG, JPEG, in a sub-folder) and one broken file; and, in
    labelled/, the first 20 test digits as lossless PNGs: (folder, {file name: label})."""
    from resnet_train.data.embedded import load_digits_arrays

    folder = tmp_path_factory.mktemp("pictures")
    x_train, x_test, y_train, y_test = load_digits_arrays()
    Image.fromarray(x_train[0]).save(folder / "first.png")
    (folder / "more").mkdir()
    Image.fromarray(x_train[1]).resize((64, 64)).save(folder / "more" / "second.jpg")
    Image.fromarray(x_train[2]).save(folder / "more" / "third.bmp")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "labelled").mkdir()
    labels = {"first.png": int(y_train[0]), "second.jpg": int(y_train[1]), "third.bmp": int(y_train[2])}
    for i in range(20):
        Image.fromarray(x_test[i]).save(folder / "labelled" / f"test{i:02d}.png")
        labels[f"test{i:02d}.png"] = int(y_test[i])
    return folder, labels


def test_training_writes_curves_and_no_best_checkpoint_chosen_on_the_test_set(trained):
    width, height = png_size(trained / "curves.png")
    assert width >= 600 and height >= 300
    assert not (trained / "checkpoints" / "best").exists()  # no validation split: nothing to choose it by


def test_curves_are_redrawn_at_most_every_30_s_and_always_at_the_end(tmp_path, monkeypatch):
    from resnet_train.report import plots

    (tmp_path / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"split": s, "epoch": 1, "step": 4, "loss": 1.0, "accuracy": 0.5}) + "\n"
            for s in ("train", "eval")
        )
    )
    now = [100.0]
    monkeypatch.setattr(plots.time, "monotonic", lambda: now[0])
    curves = plots.CurvesEvery(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    now[0] += 29
    assert not curves.epoch_ended(last=False) and not (tmp_path / "curves.png").exists()
    now[0] += 2
    assert curves.epoch_ended(last=False) and png_size(tmp_path / "curves.png")[0] >= 600
    now[0] += 1
    assert not curves.epoch_ended(last=False)
    assert curves.epoch_ended(last=True)  # the last epoch, or a stop: whatever the time


def test_eval_writes_metrics_per_class_and_a_confusion_matrix(trained, cli):
    done = cli(f"run={trained}", "tta=flip", "checkpoint=last", entry="resnet-eval")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "digits test: 100 images" in done.stdout and "per-class accuracy:" in done.stdout
    result = json.loads((trained / "eval" / "test_flip.json").read_text())
    assert result["examples"] == 100 and {"loss", "accuracy", "top5"} <= set(result)
    assert set(result["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert np.array(result["confusion_matrix"]).sum() == 100
    assert png_size(trained / "eval" / "test_flip_confusion.png")[0] >= 300
    plain = cli(f"run={trained}", entry="resnet-eval")
    assert plain.returncode == 0 and (trained / "eval" / "test.json").exists()


def test_flip_tta_averages_the_image_and_its_mirror_images_predictions(trained):
    from resnet_train.tools.evaluate import predict_probabilities
    from resnet_train.training.runs import load_run

    model = load_run(trained, "last").model
    images, labels = digits_test(16)
    batches = [(tf.constant(images), tf.constant(labels), tf.ones(16))]
    plain, _ = predict_probabilities(model, batches)
    flipped, _ = predict_probabilities(model, batches, "flip")
    mirror = tf.nn.softmax(model(tf.reverse(tf.constant(images), axis=[2]), training=False)).numpy()
    np.testing.assert_allclose(flipped, (plain + mirror) / 2, rtol=1e-5, atol=1e-6)
    assert np.abs(flipped - plain).max() > 1e-3  # digits are not mirror-symmetric: the average moved


def test_eval_on_another_folder_with_the_same_classes(trained, tmp_path, cli):
    """README: `resnet-eval data.source=folder data.path=...` scores the run's model on other images
    of its classes; its figures are the model's own predictions on those files."""
    from resnet_train.data.embedded import load_digits_arrays
    from resnet_train.training.runs import load_run

    x_train, _, y_train, _ = load_digits_arrays()
    images, labels = digits_test(40)
    root = tmp_path / "more_digits"
    for split, xs, ys in (("train", x_train[:100], y_train[:100]), ("test", images, labels)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            (root / split / str(y)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(root / split / str(y) / f"{i}.png")
    done = cli(f"run={trained}", "data.source=folder", f"data.path={root}", entry="resnet-eval")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((trained / "eval" / "test.json").read_text())
    predicted = np.argmax(load_run(trained, "last").model(images, training=False).numpy(), axis=1)
    assert result["examples"] == 40
    assert result["accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-6)


def test_eval_refuses_a_dataset_with_other_classes(trained, tmp_path, cli):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    done = cli(f"run={trained}", "data.source=folder", f"data.path={tmp_path}", entry="resnet-eval")
    assert done.returncode == 2
    assert "predicts 10 classes but" in done.stderr and "has 3" in done.stderr
    missing = tool("resnet-eval", f"run={tmp_path / 'nowhere'}")  # resnet-eval's process of its own
    assert missing.returncode == 2 and "not a resnet-train run directory" in missing.stderr


def test_eval_refuses_a_dataset_of_another_image_size_in_one_line(trained, tmp_path, cli):
    """The digits' 10 classes, but at 16x16 (the model takes 32x32): one line, exit 2, no eval file."""
    data = tmp_path / "small_digits"
    x_test, y_test = digits_test(100)
    for label in range(10):
        (data / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(y_test == label)[:3]:
            Image.fromarray(x_test[i]).save(data / str(label) / f"{i}.png")
    done = cli(
        f"run={trained}",
        "data.source=folder",
        f"data.path={data}",
        "data.image_size=16",
        "data.split=train",
        entry="resnet-eval",
    )
    err = done.stderr
    assert done.returncode == 2, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith("resnet-eval:")] == [
        "resnet-eval: error: the model takes (32, 32, 3) images but small_digits has (16, 16, 3): set "
        "data.image_size to match"
    ], err[-2000:]
    assert "Traceback" not in err and not (trained / "eval" / "train.json").exists()


def test_predict_prints_top_k_and_reports_unreadable_files(trained, pictures, cli):
    from resnet_train.training.runs import load_run

    folder, labels = pictures
    done = cli(f"run={trained}", f"images=[{folder}]", "output=json", "top_k=10", entry="resnet-predict")
    assert done.returncode == 2  # one file was broken (bad input) ...
    assert "broken.png" in done.stderr
    result = json.loads(done.stdout)  # ... and the others were still predicted
    assert len(result["failed"]) == 1 and result["failed"][0]["path"].endswith("broken.png")
    found = {Path(item["path"]).name: item["predictions"] for item in result["predictions"]}
    assert set(found) == set(labels)
    probs = {}
    for name, predictions in found.items():
        p = [item["probability"] for item in predictions]
        assert len(p) == 10 and p == sorted(p, reverse=True) and abs(sum(p) - 1) < 1e-4
        assert all(item["class"] == str(item["index"]) for item in predictions)  # the digits' names
        probs[name] = np.array([item["probability"] for item in sorted(predictions, key=lambda i: i["index"])])

    # The labels: test digits read from files are classified as the model classifies the arrays
    # (the same probabilities: lossless PNGs at the model's size), and mostly correctly.
    x_test, y_test = digits_test(20)
    direct = tf.nn.softmax(load_run(trained).model(x_test, training=False)).numpy()
    from_files = np.stack([probs[f"test{i:02d}.png"] for i in range(20)])
    assert [labels[f"test{i:02d}.png"] for i in range(20)] == list(y_test)
    np.testing.assert_allclose(from_files, direct, atol=1e-5)
    accuracy = np.mean(from_files.argmax(1) == y_test)
    assert accuracy >= 0.6 and accuracy == np.mean(direct.argmax(1) == y_test)
    scans = {n: (int(probs[n].argmax()), labels[n]) for n in ("first.png", "second.jpg", "third.bmp")}
    assert sum(got == label for got, label in scans.values()) >= 2, scans  # (predicted, label)

    # resnet-predict's process of its own: nothing but the predictions on its stdout
    text = tool("resnet-predict", f"run={trained}", f"images=[{folder / 'first.png'}]")  # top_k=5
    assert text.returncode == 0
    # path: class probability, ... for the 5 most probable classes: the JSON's, to 3 decimals
    assert (
        text.stdout
        == f"{folder / 'first.png'}: "
        + ", ".join(f"{item['class']} {item['probability']:.3f}" for item in found["first.png"][:5])
        + "\n"
    )


# The most an unquantised export may change a probability: the float32 maths of the same model,
# only in another op order (TF's graph optimiser, the TFLite converter folding batch norm into the
# convolutions): a few float32 roundings (eps 1.2e-7) of logits of order 10, through a softmax, stay
# far below it. A .keras file is the same Keras layers op for op: no difference at all.
FLOAT32_EXPORT_BOUND = {"saved_model": 1e-5, "tflite": 1e-5, "onnx": 1e-5, "keras": 0.0}


def near_ties(probs, bound):
    """How many images an error of `bound` on each probability could move to another top-1 class:
    those whose two largest probabilities are within 2 * bound."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return int(np.sum(top2[:, 1] - top2[:, 0] <= 2 * bound))


# The format whose export runs as resnet-export's process of its own (the cheapest); the others
# run the same entry point in this process.
EXPORT_IN_A_PROCESS = "keras"


@pytest.fixture(scope="module")
def cli_exports(trained, tmp_path_factory):
    """export(fmt, cli) -> (CompletedProcess, its out folder): the unquantised export of `fmt` by
    resnet-export, made once per module whichever test asks first: the CLI test and the comparison
    with the quantised exports read the same files."""
    root, made = tmp_path_factory.mktemp("exports"), {}

    def export(fmt, cli):
        if fmt not in made:
            out = root / f"{fmt}_none"
            args = (f"run={trained}", f"format={fmt}", f"out={out}")
            made[fmt] = (
                (tool("resnet-export", *args) if fmt == EXPORT_IN_A_PROCESS else cli(*args, entry="resnet-export")),
                out,
            )
        return made[fmt]

    return export


def printed_export(done):
    """What resnet-export printed: (exported path, MB, examples, exported accuracy, original
    accuracy, top-1 agreement, largest probability difference)."""
    assert done.returncode == 0, done.stderr[-2000:]
    ((path, megabytes),) = re.findall(r"^Exported \w+(?: \(opset \d+\))?: (\S+) \(([\d.]+) MB\)$", done.stdout, re.M)
    line = re.search(
        r"Accuracy on (\d+) test images: exported ([\d.]+), original ([\d.]+); top-1 agreement "
        r"([\d.]+), largest probability difference ([\d.e+-]+)",
        done.stdout,
    )
    assert line, done.stdout
    return (Path(path), float(megabytes), *(float(g) for g in line.groups()))


@pytest.mark.parametrize("fmt", ["saved_model", "keras", "tflite", "onnx"])
def test_export_cli_reports_accuracy_and_size(trained, cli_exports, cli, fmt):
    from resnet_train.tools.export import load_predictor
    from resnet_train.training.runs import load_run

    done, out = cli_exports(fmt, cli)
    exported_file, megabytes, examples, exported, original, agreement, difference = printed_export(done)
    assert exported_file.parent == out and exported_file.exists()
    size = (
        sum(f.stat().st_size for f in exported_file.rglob("*") if f.is_file())
        if exported_file.is_dir()
        else exported_file.stat().st_size
    )
    assert megabytes == pytest.approx(size / 1e6, abs=0.005)  # printed with 2 decimals
    assert examples == 100

    # Both accuracies recomputed here: the run's model, and the exported file loaded back, on the
    # same 100 test images (a multiple of 0.01: the 4 printed decimals are exact).
    x_test, y_test = digits_test(100)
    direct = tf.nn.softmax(load_run(trained).model(x_test, training=False)).numpy()
    assert original == np.mean(direct.argmax(1) == y_test) and original >= 0.6
    bound = FLOAT32_EXPORT_BOUND[fmt]
    ties = near_ties(direct, bound)  # the only images whose top-1 the export may change
    reloaded = load_predictor(exported_file, fmt)(x_test)
    assert np.abs(reloaded - direct).max() <= bound
    assert abs(exported - np.mean(reloaded.argmax(1) == y_test)) <= ties / 100
    # Printed: the probabilities within the bound, so the accuracies and the top-1 classes differ
    # by no more than the near ties (none, unless two classes are within 2e-5 of each other).
    assert difference <= bound and abs(exported - original) <= ties / 100 and agreement >= 1 - ties / 100, (
        done.stdout,
        ties,
    )


def test_exported_models_predict_what_the_original_does(trained, tmp_path, cli_exports, cli):
    from resnet_train.data.embedded import load_digits_arrays
    from resnet_train.tools.export import export_run, load_predictor
    from resnet_train.training.runs import load_run

    run = load_run(trained)
    images = load_digits_arrays()[1][:40]
    original = tf.nn.softmax(run.model(images, training=False)).numpy()
    # (format, quantize, largest allowed probability difference). Unquantised: FLOAT32_EXPORT_BOUND.
    # Quantised, the differences measured on these 40 images with fixtures of seeds 0-4, under
    # TF_ENABLE_ONEDNN_OPTS=0 and 1 (10 fixtures): float16 <= 2.0e-3, dynamic <= 3.4e-2, int8
    # <= 3.8e-2, top-1 agreement >= 0.975 (and the unquantised ones <= 8e-7, the .keras one 0).
    # The unquantised files are the CLI test's (cli_exports), not exported a second time.
    folders = {}
    for fmt, quantize, tolerance in [
        ("saved_model", "none", FLOAT32_EXPORT_BOUND["saved_model"]),
        ("keras", "none", FLOAT32_EXPORT_BOUND["keras"]),
        ("tflite", "none", FLOAT32_EXPORT_BOUND["tflite"]),
        ("onnx", "none", FLOAT32_EXPORT_BOUND["onnx"]),
        ("tflite", "float16", 5e-3),
        ("tflite", "dynamic", 5e-2),
        ("tflite", "int8", 1e-1),
    ]:
        if quantize == "none":
            done, folders[fmt, quantize] = cli_exports(fmt, cli)
            path, _, examples, *_ = printed_export(done)
        else:
            folders[fmt, quantize] = tmp_path / f"{fmt}_{quantize}"
            result = export_run(trained, fmt=fmt, quantize=quantize, out=folders[fmt, quantize])
            path, examples = Path(result["path"]), result["examples"]
        assert examples == 100
        got = load_predictor(path, fmt)(images)
        assert np.abs(got - original).max() <= tolerance, (fmt, quantize)
        assert np.mean(got.argmax(1) == original.argmax(1)) >= 0.9, (fmt, quantize)
    sizes = {
        q: folders["tflite", q].glob("*.tflite").__next__().stat().st_size
        for q in ("none", "float16", "dynamic", "int8")
    }
    assert sizes["float16"] < sizes["none"] and sizes["int8"] < sizes["float16"]

    # The SavedModel also serves encoded images, and ships its class names.
    saved = tf.saved_model.load(str(folders["saved_model", "none"] / "saved_model"))
    png = tf.io.encode_png(images[0])
    served = saved.signatures["serving_encoded"](encoded=tf.stack([png]))
    np.testing.assert_allclose(served["probabilities"].numpy()[0], original[0], atol=1e-5)
    assert int(served["classes"][0]) == int(original[0].argmax())
    names = (folders["saved_model", "none"] / "saved_model" / "class_names.txt").read_text().split()
    assert names == [str(i) for i in range(10)]
    reloaded = keras.saving.load_model(str(folders["keras", "none"] / "model.keras"), safe_mode=True)
    assert reloaded.name == run.model.name


def test_onnx_export_takes_uint8_images_alone_in_the_opset_asked_for(trained, tmp_path, cli_exports, cli):
    """One input (uint8 images, the normalisation inside: no statistics left as extra inputs, which
    keras' Normalization layer gave), three outputs (the embeddings too), and each opset tf2onnx
    offers at its ends."""
    import onnx
    import onnxruntime

    from resnet_train.tools.export import export_run, onnx_opsets

    done, out = cli_exports("onnx", cli)
    assert re.search(r"^Exported onnx \(opset 15\): ", done.stdout, re.M), done.stdout  # tf2onnx's default
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ((images,),) = [session.get_inputs()]
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)", [32, 32, 3])
    assert sorted(o.name for o in session.get_outputs()) == ["classes", "embeddings", "probabilities"]
    x, _ = digits_test(8)
    probabilities, classes = session.run(["probabilities", "classes"], {"images": x})
    np.testing.assert_array_equal(classes, probabilities.argmax(1))
    assert (out / "model_class_names.txt").read_text().split() == [str(i) for i in range(10)]
    for opset in (onnx_opsets()[0], onnx_opsets()[-1]):
        r = export_run(trained, fmt="onnx", opset=opset, out=tmp_path / str(opset))
        written = onnx.load(r["path"])
        assert r["opset"] == opset == next(o.version for o in written.opset_import if o.domain == "")
        assert r["max_probability_difference"] <= FLOAT32_EXPORT_BOUND["onnx"] and r["top1_agreement"] == 1.0


def test_explain_writes_grad_cam_pictures(trained, pictures, tmp_path):
    folder, _ = pictures
    done = tool(
        "resnet-explain", f"run={trained}", f"images=[{folder / 'first.png'},{folder / 'more'}]", f"out={tmp_path}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pngs = sorted(tmp_path.glob("*_gradcam.png"))
    assert [p.name for p in pngs] == ["first_gradcam.png", "second_gradcam.png", "third_gradcam.png"]
    width, height = png_size(pngs[0])
    assert width >= 400 and height >= 200


def test_explain_writes_into_the_runs_explain_folder_by_default(trained, pictures, cli):
    folder, _ = pictures
    done = cli(f"run={trained}", f"images=[{folder / 'first.png'}]", entry="resnet-explain")
    assert done.returncode == 0, done.stderr[-2000:]
    assert png_size(trained / "explain" / "first_gradcam.png")[0] >= 400


def test_explain_keeps_images_of_one_name_in_different_folders_apart(trained, tmp_path, cli):
    """cat.png in two folders (and a cat.jpg beside one): one picture each, named after the parts
    of their paths that differ; a name no other image has stays <stem>_gradcam.png (issue 29,
    item 20: each overwrote the previous one)."""
    from resnet_train.data.embedded import load_digits_arrays
    from resnet_train.tools.explain import output_names

    digits = load_digits_arrays()[1]
    images = tmp_path / "images"
    files = [images / "a" / "cat.png", images / "b" / "cat.png", images / "b" / "cat.jpg", images / "dog.png"]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits[i]).save(f)
    out = tmp_path / "out"
    done = cli(f"run={trained}", f"images=[{images}]", f"out={out}", entry="resnet-explain")
    assert done.returncode == 0, done.stderr[-2000:]
    written = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    expected = ["a_cat_png_gradcam.png", "b_cat_png_gradcam.png", "b_cat_jpg_gradcam.png", "dog_gradcam.png"]
    assert written == {str(f): str(out / name) for f, name in zip(files, expected)}
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert len({(out / name).read_bytes() for name in expected}) == 4  # four pictures, none overwritten
    assert output_names(["x/a/cat.png", "y/a/cat.png", "z/b/cat.png", "dog.png"]) == [
        "x_a_cat_gradcam.png",
        "y_a_cat_gradcam.png",
        "z_b_cat_gradcam.png",
        "dog_gradcam.png",
    ]


def test_grad_cam_heatmap_is_normalised_and_image_sized(trained):
    from resnet_train.data.embedded import load_digits_arrays
    from resnet_train.tools.explain import grad_cam
    from resnet_train.training.runs import load_run

    run = load_run(trained)
    images = load_digits_arrays()[1][:4]
    heat, classes, probs = grad_cam(run.model, images)
    assert heat.shape == (4, 32, 32) and np.all(np.isfinite(heat)) and heat.min() >= 0 and heat.max() <= 1.0 + 1e-6
    assert classes.shape == (4,) and np.all((probs > 0) & (probs <= 1))
    predicted = tf.nn.softmax(run.model(images, training=False)).numpy()
    np.testing.assert_array_equal(classes, predicted.argmax(1))  # the predicted class is explained
    np.testing.assert_allclose(probs, predicted.max(1), rtol=1e-5)
    # Not blank, not flat: the 8x8 map of the last stage peaks at 1 (normalised); upsampled x4
    # bilinearly, the pixel nearest the peak lies 1/8 of a cell off it in each axis, so it keeps at
    # least (7/8)^2 of it (the neighbours add >= 0). Each map varies over the image.
    assert np.all(heat.max(axis=(1, 2)) >= (7 / 8) ** 2), heat.max(axis=(1, 2))
    assert np.all(heat.min(axis=(1, 2)) < heat.max(axis=(1, 2)))

    # The map is Selvaraju et al.'s: ReLU(sum_k a_k A_k) over the last stage's feature maps A_k,
    # a_k the spatial mean of d(class logit)/dA_k, scaled to a peak of 1 and resized bilinearly;
    # and it depends on the class it explains.
    probe = keras.Model(run.model.inputs, [run.model.get_layer("pool").input, run.model.output])
    other = int((classes[0] + 1) % 10)
    for explained, maps in ((classes, heat), (np.full(4, other), grad_cam(run.model, images, other)[0])):
        with tf.GradientTape() as tape:
            a, logits = probe(images, training=False)
            tape.watch(a)
            score = tf.reduce_sum(tf.gather(logits, explained, batch_dims=1))
        grads = tape.gradient(score, a).numpy()
        cam = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * a.numpy()).sum(-1), 0)
        cam = cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-8)
        np.testing.assert_allclose(maps, tf.image.resize(cam[..., None], (32, 32))[..., 0].numpy(), atol=1e-5)
    assert not np.allclose(maps[0], heat[0], atol=0.05)  # another class, another map


def test_plot_overlays_runs(trained, tmp_path, cli):
    out = tmp_path / "sweep.png"
    done = cli(f"runs=[{trained},{trained}]", "names=[a,b]", f"out={out}", entry="resnet-plot")
    assert done.returncode == 0, done.stderr[-2000:]
    width, height = png_size(out)
    assert width >= 800 and height >= 300
    bad = tool("resnet-plot", f"runs=[{tmp_path}]")  # resnet-plot's process of its own
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr


def checkpoint_number(prefix):
    return int(str(prefix).rsplit("-", 1)[-1])


def test_the_tools_read_only_checkpoints_inside_the_run_whatever_its_index_names(trained, tmp_path, cli, caplog):
    """Indexes (checkpoints/ and best/) that name another run's checkpoint, or are damaged: the
    tools and init_from=DIR take the newest checkpoint inside the run's own folder, with a warning
    naming it, as training does (issue 29, item 18); never the other run's model."""
    import shutil

    from resnet_train.training.finetune import load_source
    from resnet_train.training.runs import resolve

    other, run = tmp_path / "other", tmp_path / "run"
    shutil.copytree(trained, other)
    shutil.copytree(trained, run)
    checkpoints, best = run / "checkpoints", run / "checkpoints" / "best"
    prefixes = sorted((f.with_suffix("") for f in checkpoints.glob("ckpt-*.index")), key=checkpoint_number)
    own, theirs = prefixes[0], other / "checkpoints" / prefixes[-1].name
    for newer in prefixes[1:]:  # this run keeps its oldest checkpoint only; the other one is newer
        for f in checkpoints.glob(newer.name + ".*"):
            f.unlink()
    best.mkdir()
    for f in checkpoints.glob(own.name + ".*"):
        shutil.copy(f, best / f.name)
    for index in (checkpoints / "checkpoint", best / "checkpoint"):  # copied from, or crafted to name, another run
        index.write_text(f'model_checkpoint_path: "{theirs}"\nall_model_checkpoint_paths: "{theirs}"\n')

    with caplog.at_level("WARNING"):
        assert resolve(run, "last", has_validation=False) == str(own)
        assert resolve(run, "best", has_validation=True) == str(best / own.name)
        assert load_source(run)[1] == str(own)  # init_from=DIR
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"{checkpoints}: its checkpoint index names {theirs}, outside it; using {own}" in warnings[0]
    assert f"{best}: its checkpoint index names {theirs}, outside it; using {best / own.name}" in warnings[1]

    # A damaged best/ index: a warning naming what is used instead, not a silent fallback
    caplog.clear()
    (best / "checkpoint").write_text("")
    with caplog.at_level("WARNING"):
        assert resolve(run, "best") == str(best / own.name)
        for f in best.glob(own.name + ".*"):
            f.unlink()
        assert resolve(run, "best") == str(own)  # best/ holds nothing: the final one, said
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        warnings[0]
        == f"{best}: its checkpoint index is damaged; using {best / own.name}, the newest checkpoint inside it"
    )
    assert f"checkpoint=best: {best} holds no checkpoint; using the final one, {own}" in warnings

    # Through a tool: the model loaded is the run's own
    for f in checkpoints.glob(own.name + ".*"):
        shutil.copy(f, best / f.name)
    (best / "checkpoint").write_text(f'model_checkpoint_path: "{theirs}"\n')
    done = cli(f"run={run}", "checkpoint=best", entry="resnet-eval")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Loaded cifar_resnet8 from {best / own.name}" in done.stderr and str(other) not in done.stdout


# Exports under a file-size limit (RLIMIT_FSIZE, `ulimit -f`): each write of more than `limit` bytes
# fails (EFBIG: Python ignores SIGXFSZ). The limit is set just before the export's own files are
# written: for TFLite after the conversion (which writes a SavedModel of its own to /tmp first).
FSIZE_LIMITED_EXPORTS = r"""
import resource, sys
from tensorflow.lite.python.lite import TFLiteSavedModelConverterV2
from resnet_train.cli import tools
from resnet_train.errors import UserError
from resnet_train.tools.export import export_run

run, out, limit, *formats = sys.argv[1:]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
convert = TFLiteSavedModelConverterV2.convert

def limit_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), hard))

def convert_then_limit(self):
    converted = convert(self)
    limit_files()
    return converted

TFLiteSavedModelConverterV2.convert = convert_then_limit
for fmt in formats:
    if fmt != "tflite":
        limit_files()
    try:
        if fmt == "onnx":  # the console script: its one line and exit code
            sys.argv = ["resnet-export", f"run={run}", f"format={fmt}", f"out={out}"]
            tools.export()
        export_run(run, fmt=fmt, out=out)
        print(fmt, "exported", flush=True)
    except UserError as e:
        print(fmt, "refused", e, flush=True)
    except SystemExit as e:
        print(fmt, "exit", e.code, flush=True)
    except BaseException as e:
        print(fmt, "crashed", type(e).__name__, str(e).splitlines()[0], flush=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
"""


def test_an_export_that_fails_to_write_leaves_the_previous_one_as_it_was(trained, tmp_path, cli_exports, cli):
    """Every format, and its class names, is written beside its target and renamed into place
    (issue 29, item 19): a write failure (here a file-size limit) is one line naming the file,
    exit 2, and the previous export is byte for byte what it was, with nothing left beside it."""
    import shutil

    from helpers import file_digests

    out = tmp_path / "export"
    out.mkdir()
    for fmt in ("saved_model", "keras", "tflite", "onnx"):  # the good exports, one folder
        _, made = cli_exports(fmt, cli)
        shutil.copytree(made, out, dirs_exist_ok=True)
    before = file_digests(out)
    assert {"saved_model/class_names.txt", "model.keras", "model.tflite", "model.onnx"} <= set(before)
    done = launches.run(
        [sys.executable, "-c", FSIZE_LIMITED_EXPORTS, str(trained), str(out), str(16 * 1024)]
        + ["saved_model", "keras", "tflite", "onnx"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    for fmt, name in [("saved_model", "saved_model"), ("keras", "model.keras"), ("tflite", "model.tflite")]:
        assert results[fmt] == (
            f"refused could not write {out / name} (File too large): free disk space or choose another "
            f"out=DIR; the previous {name} is unchanged"
        ), done.stdout
    assert results["onnx"] == "exit 2", done.stdout + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("resnet-export:")]
    assert errors == [
        f"resnet-export: error: could not write {out / 'model.onnx'} (File too large): free disk space or "
        f"choose another out=DIR; the previous model.onnx is unchanged"
    ], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert file_digests(out) == before  # byte for byte, and no temporary file left
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder either
