"""data.task=multilabel, the tools' side (issue 34 item 2): resnet-eval's figures equal
scikit-learn's on the model's own sigmoid outputs, resnet-predict returns every label at the
threshold, the exports return per-class sigmoid probabilities (not a softmax), and the model card
says multi-label. One tiny run on a made-up multi-label folder, trained once for the module."""

import json

import numpy as np
import pytest
import yaml
from helpers import compose
from test_multilabel_data import make_multilabel_folder

from resnet_train.models.probabilities import numpy_probabilities

ATOL = 2e-5  # float32 sigmoids from other runtimes / graphs of the same model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A ResNet-8 trained 3 epochs (in this process) on 64 images with 4 labels each present or not."""
    from resnet_train.training.loop import train_and_evaluate

    root = tmp_path_factory.mktemp("scenes")
    make_multilabel_folder(root / "images", n=64)
    workdir = root / "run"
    cfg = compose(
        "data=folder",
        f"data.path={root / 'images'}",
        "data.task=multilabel",
        "augment=none",  # a flip would move a label's cue to another label's quadrant
        "depth=8",
        "epochs=3",
        "batch_size=16",
        "runtime=one_device",
        "runtime.precision=float32",
    )
    train_and_evaluate(cfg, workdir)
    return workdir


@pytest.fixture(scope="module")
def test_split(run):
    """The run's test images, labels and the model's own logits, computed here (not by the tools)."""
    from resnet_train.data import pipeline
    from resnet_train.tools.artifacts import as_arrays
    from resnet_train.tools.evaluate import eval_split
    from resnet_train.training.runs import load_run

    loaded = load_run(run)
    ds, size, info = eval_split(loaded.cfg, loaded.info, None, "test")
    images, labels = as_arrays(pipeline.eval_batches(ds, 16, pipeline.eval_preprocess(info)))
    logits = loaded.model(images, training=False).numpy()
    return images, labels, logits, loaded.info.class_names


def _sklearn(labels, probs, threshold):
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    y = labels > 0.5
    predicted = probs >= threshold
    ap = {c: average_precision_score(y[:, c], probs[:, c]) for c in range(y.shape[1]) if y[:, c].any()}
    # Classes neither true nor predicted have no F1 (ours: None, left out of the mean).
    defined = [c for c in range(y.shape[1]) if y[:, c].any() or predicted[:, c].any()]
    f1 = f1_score(y, predicted, average=None, zero_division=0)
    return ap, {c: f1[c] for c in defined}, accuracy_score(y, predicted)


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_eval_equals_scikit_learn_on_the_models_sigmoid_outputs(run, test_split, cli, threshold):
    images, labels, logits, names = test_split
    args = [f"run={run}"] + ([] if threshold is None else [f"threshold={threshold}"])
    done = cli(*args, entry="resnet-eval")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((run / "eval" / "test.json").read_text())
    t = 0.5 if threshold is None else threshold
    assert result["task"] == "multilabel" and result["threshold"] == t and result["examples"] == len(labels)
    assert "confusion_matrix" not in result and "balanced_accuracy" not in result
    assert not any(key.startswith("top") for key in result), sorted(result)
    assert not (run / "eval" / "test_confusion.png").exists()

    probs = numpy_probabilities(logits, "multilabel").astype(np.float64)
    ap, f1, exact = _sklearn(labels, probs, t)
    assert ap, "the test split has positives"
    for c, name in enumerate(names):
        assert result["per_class_ap"][name] == (pytest.approx(ap[c], abs=1e-5) if c in ap else None)
        assert result["per_class_f1"][name] == (pytest.approx(f1[c], abs=1e-9) if c in f1 else None)
    assert result["map"] == pytest.approx(np.mean(list(ap.values())), abs=1e-5)
    assert result["macro_f1"] == pytest.approx(np.mean(list(f1.values())), abs=1e-9)
    assert result["accuracy"] == pytest.approx(exact, abs=1e-9)
    import keras

    bce = float(np.mean(keras.losses.binary_crossentropy(labels, logits, from_logits=True)))
    assert result["loss"] == pytest.approx(bce, abs=1e-4)
    # The printed table: every label with its AP and F1.
    assert f"mAP {result['map']:.4f}" in done.stdout and f"threshold {t:g}" in done.stdout
    for name in names:
        ap_text = "-" if result["per_class_ap"][name] is None else f"{result['per_class_ap'][name]:.3f}"
        assert any(line.startswith(name) and ap_text in line for line in done.stdout.splitlines()), done.stdout


def test_predict_returns_every_label_at_the_threshold(run, test_split, cli, tmp_path):
    from resnet_train.training.runs import load_images, load_run

    folder = run.parent / "images"
    loaded = load_run(run)
    images, ok, _ = load_images([folder], loaded.info)
    probs = numpy_probabilities(loaded.model(images, training=False).numpy(), "multilabel")
    names = loaded.info.class_names
    found = {}
    for t in (0.2, 0.8):
        done = cli(f"run={run}", f"images=[{folder}]", f"threshold={t}", "output=json", entry="resnet-predict")
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads(done.stdout)["predictions"]
        assert [r["path"] for r in results] == [str(p) for p in ok]
        for r, p in zip(results, probs):
            assert r["threshold"] == t
            assert {label["class"] for label in r["labels"]} == {names[c] for c in np.flatnonzero(p >= t)}
            assert [label["probability"] for label in r["labels"]] == sorted(
                (label["probability"] for label in r["labels"]), reverse=True
            )
            for label in r["labels"]:
                assert label["probability"] == pytest.approx(p[label["index"]], abs=ATOL)
            assert len(r["predictions"]) == len(names)  # top_k as before (5, capped at the classes)
        found[t] = [len(r["labels"]) for r in results]
    assert sum(found[0.2]) > sum(found[0.8]), found  # a lower threshold gives more labels

    done = cli(f"run={run}", f"images=[{folder / 'even' / 'img000.png'}]", entry="resnet-predict")
    assert done.returncode == 0 and ("(>= 0.5)" in done.stdout or "no label >= 0.5" in done.stdout), done.stdout
    done = cli(
        f"run={run}", f"images=[{folder}]", f"out={tmp_path / 'e.npz'}", "output=embeddings", entry="resnet-predict"
    )
    assert done.returncode == 0 and np.load(tmp_path / "e.npz")["embeddings"].shape[0] == len(ok)


@pytest.mark.parametrize("threshold", ["0", "1", "1.5", "-0.2"])
def test_a_threshold_outside_0_1_is_refused_in_one_line(run, cli, threshold):
    for entry, extra in (("resnet-predict", [f"images=[{run}]"]), ("resnet-eval", [])):
        done = cli(f"run={run}", *extra, f"threshold={threshold}", entry=entry)
        assert done.returncode == 2, done.stderr[-2000:]
        (line,) = [x for x in done.stderr.splitlines() if "threshold must be in (0, 1)" in x]
        assert f"(got {float(threshold):g})" in line


def test_threshold_on_a_multiclass_run_is_refused():
    from types import SimpleNamespace

    from resnet_train.errors import UserError
    from resnet_train.tools.multilabel import threshold_for

    info = SimpleNamespace(task="multiclass")
    assert threshold_for(None, info) is None
    with pytest.raises(UserError, match=r"threshold=0.3 applies to multi-label runs"):
        threshold_for(None, info, 0.3)


def test_exports_return_per_class_sigmoids_and_the_card_says_multi_label(run, test_split, tmp_path):
    import tensorflow as tf

    from resnet_train.tools.export import export_run, load_predictor

    images, labels, logits, names = test_split
    expected = numpy_probabilities(logits, "multilabel")
    assert np.abs(expected.sum(1) - 1).max() > 0.05  # sigmoids: a row need not sum to 1
    out = tmp_path / "export"
    formats = ["saved_model", "keras", "tflite"]
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401

        formats.append("onnx")
    except ImportError:
        pass
    for fmt in formats:
        r = export_run(run, fmt=fmt, out=out)
        got = load_predictor(r["path"], fmt, "multilabel")(images)
        np.testing.assert_allclose(got, expected, atol=ATOL, err_msg=fmt)
        assert r["map"] == pytest.approx(r["original_map"], abs=1e-3) and r["threshold"] == 0.5
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=ATOL)
    # `labels`: every label at the run's threshold (0.5), from the served probabilities themselves
    served_labels = served["labels"].numpy()
    assert served_labels.dtype == np.int32 and 0 < served_labels.sum() < served_labels.size
    np.testing.assert_array_equal(served_labels, (served["probabilities"].numpy() >= 0.5).astype(np.int32))
    if "onnx" in formats:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"))
        probabilities, onnx_labels = session.run(["probabilities", "labels"], {"images": images})
        np.testing.assert_array_equal(onnx_labels, (probabilities >= 0.5).astype(np.int32))
    from ai_edge_litert.interpreter import Interpreter  # the TFLite file's `labels`, by its signature

    lite = Interpreter(model_path=str(out / "model.tflite")).get_signature_runner("serving_default")(images=images)
    assert lite["labels"].dtype == np.int32 and 0 < lite["labels"].sum() < lite["labels"].size
    np.testing.assert_array_equal(lite["labels"], (lite["probabilities"] >= 0.5).astype(np.int32))
    np.testing.assert_allclose(lite["probabilities"], expected, atol=ATOL)

    text = (out / "README.md").read_text()
    meta, body = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(meta)
    assert "multi-label-classification" in meta["tags"]
    assert {"map", "macro_f1"} <= set(meta["metrics"]), meta["metrics"]
    (model,) = meta["model-index"]
    test = next(r for r in model["results"] if r["dataset"]["split"] == "test")
    results = json.loads((run / "results.json").read_text())
    figures = {m["type"]: m["value"] for m in test["metrics"]}
    assert figures["map"] == results["test"]["map"] and figures["macro_f1"] == results["test"]["macro_f1"]
    assert figures["exact_match"] == results["test"]["accuracy"] and "accuracy" not in figures  # named what it is
    assert "- loss: bce (a sigmoid per label" in body  # what trained it, not loss.name's default ce
    assert "keras.ops.sigmoid" in body and "softmax" not in body.replace("not a softmax", "")
    assert "probabilities >= 0.5" in body and "multi-label" in body
    assert 'session.run(["probabilities", "classes", "embeddings", "labels"]' in body
    assert '"model.tflite")  # outputs: probabilities, classes, labels (>= 0.5)' in body


def test_grad_cam_reports_the_most_probable_labels_sigmoid(run, test_split, cli, tmp_path):
    from resnet_train.tools.explain import grad_cam
    from resnet_train.training.runs import load_run

    images, _, logits, _ = test_split
    _, classes, probs = grad_cam(load_run(run).model, images[:4], task="multilabel")
    np.testing.assert_array_equal(classes, logits[:4].argmax(1))
    expected = numpy_probabilities(logits[:4], "multilabel")[np.arange(4), classes]
    np.testing.assert_allclose(probs, expected, atol=ATOL)  # a softmax would give less here
    image = run.parent / "images" / "even" / "img000.png"
    done = cli(f"run={run}", f"images=[{image}]", f"out={tmp_path}", entry="resnet-explain")
    assert done.returncode == 0 and (tmp_path / "img000_gradcam.png").exists(), done.stderr[-2000:]


def test_a_multi_label_run_cannot_teach_a_single_label_student(run, tmp_path):
    """Its logits are one sigmoid per label, not one distribution over the classes."""
    from helpers import TINY

    from resnet_train.errors import UserError
    from resnet_train.training.loop import train_and_evaluate

    cfg = compose(*TINY, "epochs=1", f"distill.teacher={run}")
    with pytest.raises(UserError, match=r"is a multi-label run \(a sigmoid per label\)"):
        train_and_evaluate(cfg, tmp_path / "student")


def test_the_format_all_table_shows_map_and_names_accuracy_exact_match():
    from resnet_train.tools.compare import csv_text, markdown_table

    row = {"format": "onnx", "quantize": "none", "runtime": "onnxruntime", "sparsity": 0.0, "bytes": 1, "gzip_bytes": 1,
           "accuracy": 0.5, "map": 0.75, "label_agreement": 0.9, "top1_agreement": 1.0,
           "max_probability_difference": 1e-6, "path": "model.onnx", "examples": 8, "original_accuracy": 0.5,
           "original_map": 0.8, **{f"b{b}_{s}_ms": 1.0 for b in (1, 32) for s in ("median", "p90")}}  # fmt: skip
    header = markdown_table([row], "caption").splitlines()[2]
    assert "| exact match | mAP | label-set agreement |" in header and "| accuracy |" not in header
    assert "map" in csv_text([row]).splitlines()[0].split(",") and "original_map" in csv_text([row])
