"""data.task=multilabel's training side: the figures equal scikit-learn's (report/label_metrics.py
on every gathered score, over two replicas with padding), the trainer learns with sigmoid BCE, and
a run through resnet-train reports mAP and per-class F1 in the epoch line, metrics.jsonl,
TensorBoard and results.json, and chooses best/ by map."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from resnet_train.report import label_metrics

# Test mAP on the Zen 3: folder 0.90-1.00 (seeds 0-4, oneDNN on and off), TFRecords 0.93-1.00 (seeds 0-3); chance ~0.5.
MAP_LEARNT = 0.75


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_and_f1_equal_scikit_learns_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5, 120)), int(rng.integers(2, 7))
    labels = (rng.random((n, k)) < 0.3).astype(np.float32)
    labels[0] = 1  # every class has a positive
    scores = np.round(rng.random((n, k)), int(rng.integers(1, 3)))  # one or two decimals: many ties
    figures = label_metrics.report(labels, scores, 0.5, list("abcdefg")[:k])
    expected_ap = [average_precision_score(labels[:, c], scores[:, c]) for c in range(k)]
    assert list(figures["per_class_ap"].values()) == pytest.approx(expected_ap, abs=1e-12)
    assert figures["map"] == pytest.approx(average_precision_score(labels, scores, average="macro"), abs=1e-12)
    predicted = (scores >= 0.5).astype(np.float32)
    present = [c for c in range(k) if labels[:, c].any() or predicted[:, c].any()]
    expected_f1 = f1_score(labels, predicted, average=None, labels=present, zero_division=0)
    got_f1 = [figures["per_class_f1"][n] for n in np.array(list("abcdefg"))[present]]
    assert got_f1 == pytest.approx(list(expected_f1), abs=1e-12)
    assert figures["macro_f1"] == pytest.approx(np.mean(expected_f1), abs=1e-12)
    assert figures["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)


def test_a_class_without_positives_is_left_out_of_map_and_has_no_f1_when_never_predicted():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.7, 0.6, 0.3]])
    figures = label_metrics.report(labels, scores, 0.5, ["a", "b", "c"])
    assert figures["per_class_ap"]["c"] is None and figures["per_class_f1"]["c"] is None
    assert figures["map"] == pytest.approx(average_precision_score(labels[:, :2], scores[:, :2], average="macro"))


def _tiny_model(num_classes):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))


def _colour_task(n, seed):
    """Images whose label c is 'channel c is bright': learnable by the tiny model in a few steps."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < 0.5).astype(np.float32)
    images = (rng.random((n, 8, 8, 3)) * 0.3 + labels[:, None, None, :] * 0.7).astype(np.float32)
    return images, labels


def test_the_trainer_learns_with_sigmoid_bce_and_its_evaluation_equals_scikit_learn_over_two_replicas():
    import keras
    import tensorflow as tf

    from resnet_train.runtime.devices import mirrored
    from resnet_train.training.trainer import Trainer

    strategy = mirrored(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = _tiny_model(3)
        trainer = Trainer(model, keras.optimizers.SGD(0.5), strategy, 16, num_classes=3, loss="ce",
                          multilabel=(0.5, ["red", "green", "blue"]))  # fmt: skip
    images, labels = _colour_task(256, 0)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(16)
    iterator = iter(strategy.experimental_distribute_dataset(train))
    first = _epoch_loss(trainer, iterator)
    for _ in range(3):
        last = _epoch_loss(trainer, iterator)
    assert last < 0.5 * first  # (loss=ce is ignored: sigmoid BCE; softmax CE of these targets would not fall so)

    # 21 examples in batches of 8: the last padded with 3 weight-0 examples whose labels are garbage.
    test_images, test_labels = _colour_task(21, 1)
    pad_images = np.concatenate([test_images, np.ones((3, 8, 8, 3), np.float32)])
    pad_labels = np.concatenate([test_labels, np.ones((3, 3), np.float32)])
    weights = np.r_[np.ones(21), np.zeros(3)].astype(np.float32)
    batches = tf.data.Dataset.from_tensor_slices((pad_images, pad_labels, weights)).batch(8)
    figures = trainer.evaluate(strategy.experimental_distribute_dataset(batches))

    logits = model(test_images, training=False).numpy()
    probabilities = 1 / (1 + np.exp(-logits))
    bce = keras.losses.BinaryCrossentropy(from_logits=True)(test_labels, logits).numpy()
    assert figures["examples"] == 21 and trainer.last_confusion is None
    assert figures["loss"] == pytest.approx(float(bce), rel=1e-5)
    assert figures["map"] == pytest.approx(average_precision_score(test_labels, probabilities), abs=1e-6)
    assert figures["accuracy"] == pytest.approx(accuracy_score(test_labels, probabilities >= 0.5), abs=1e-9)
    f1 = f1_score(test_labels, probabilities >= 0.5, average=None, zero_division=0)
    assert list(figures["per_class_f1"].values()) == pytest.approx(list(f1), abs=1e-6)
    assert figures["map"] > 0.9  # learnt: chance is the share of positives (~0.5)


def _epoch_loss(trainer, iterator):
    trainer.reset_train_metrics()
    trainer.train_steps(iterator, 16)
    metrics = trainer.train_metrics()
    return metrics["loss"]


def _tensorboard_tags(folder) -> set:
    import tensorflow as tf

    tags = set()
    for event_file in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_a_multilabel_folder_run_reports_map_and_per_class_f1_and_chooses_best_by_map(tmp_path, monkeypatch, capsys):
    """resnet-train on a made-up multi-label folder (tests/test_multilabel_data.py), with a
    validation split and checkpoint.best_metric=map: mAP, macro-F1 and exact match in every epoch
    line, per-class F1 in metrics.jsonl and TensorBoard, best/ at the epoch of the best
    validation mAP, the test mAP in results.json and the final line, and no confusion matrix."""
    import json

    import tensorflow as tf
    from helpers import cli_in_process
    from test_multilabel_data import CLASSES, make_multilabel_folder

    make_multilabel_folder(tmp_path / "images", n=96)
    run = tmp_path / "run"
    code, out, err = cli_in_process(
        monkeypatch, capsys, "resnet-train", "data=folder", f"data.path={tmp_path / 'images'}", "data.task=multilabel",
        "augment=none", "data.val_split=16", "checkpoint.best_metric=map", "depth=8", "epochs=4", "batch_size=16",
        "runtime=one_device", "runtime.precision=float32", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "Test mAP " in out
    log = (run / "train.log").read_text()
    figures = (
        r"\| val loss [\d.]+  mAP [\d.]+  macro-F1 [\d.]+  exact [\d.]+  F1 blue \S+ green \S+ red \S+ yellow \S+ \|"
    )
    assert len(re.findall(figures, log)) == 4, log  # each class's F1 too (up to 10 classes)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    trains = [r for r in records if r["split"] == "train"]
    assert len(evals) == 4 and set(evals[-1]["per_class_f1"]) == set(CLASSES)
    assert trains[-1]["loss"] < trains[0]["loss"]
    assert {"map", "macro_f1", *(f"per_class_f1/{c}" for c in CLASSES)} <= _tensorboard_tags(
        run / "tensorboard" / "eval"
    )
    results = json.loads((run / "results.json").read_text())
    best_epoch = max(evals, key=lambda r: r["map"])
    assert results["best_val_map"] == pytest.approx(best_epoch["map"])
    assert results["best_metric"] == "map"
    best_checkpoint = tf.train.latest_checkpoint(str(run / "checkpoints" / "best"))
    assert best_checkpoint.endswith(f"-{best_epoch['step']}"), (best_checkpoint, evals)
    test = results["test"]
    assert {"map", "macro_f1", "accuracy", "per_class_ap", "per_class_f1"} <= set(
        test
    ) and "balanced_accuracy" not in test
    assert test["map"] > MAP_LEARNT, test  # chance: each label's share of positives, ~0.5
    assert json.loads((run / "dataset.json").read_text())["task"] == "multilabel"
    assert (run / "curves.png").exists() and not (run / "confusion_test.png").exists()
    from resnet_train.report import plots

    assert plots.compare_runs([run, run], tmp_path / "runs.png").exists()  # (a sweep's: mAP for multi-label runs)


# One worker of a two-worker MultiWorkerMirroredStrategy (TF_CONFIG set by the test): the same
# tiny model (seeded) evaluated over 21 examples + 3 padding, each worker reading its share of every
# batch; prints the gathered figures and, for the test's scikit-learn check, the model's own sigmoids.
WORKER = r"""
import json, sys
import numpy as np, keras, tensorflow as tf
sys.path.insert(0, "tests")
from test_multilabel_train import _colour_task, _tiny_model
from resnet_train.training.multilabel_eval import MultilabelEvaluation
strategy = tf.distribute.MultiWorkerMirroredStrategy()
keras.utils.set_random_seed(0)
with strategy.scope():
    model = _tiny_model(3)
images, labels = _colour_task(21, 1)
weights = np.r_[np.ones(21), np.zeros(3)].astype(np.float32)
padded = (np.concatenate([images, np.ones((3, 8, 8, 3), np.float32)]), np.concatenate([labels, np.ones((3, 3))]))
batches = tf.data.Dataset.from_tensor_slices((*padded, weights)).batch(8)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
evaluate = MultilabelEvaluation(model, strategy, 0.5, ["r", "g", "b"])
figures = evaluate(strategy.experimental_distribute_dataset(batches.with_options(options)))
sigmoids = tf.sigmoid(model(images, training=False)).numpy().tolist()
print(json.dumps({"figures": figures, "sigmoids": sigmoids, "labels": labels.tolist()}))
"""


def test_two_workers_gather_every_example_once_and_report_scikit_learns_figures(tmp_path):
    """MultiWorkerMirroredStrategy over two processes on 127.0.0.1: each worker evaluates its share
    of every batch, and the gathered figures (both workers the same) cover the 21 examples once,
    padding left out, equal to scikit-learn's on the model's own sigmoids."""
    import json
    import os
    import sys

    from helpers import ROOT, run_on_free_ports

    def launches(ports):
        hosts = [f"127.0.0.1:{port}" for port in ports]
        for index in range(2):
            config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
            env = {**os.environ, "TF_CONFIG": json.dumps(config)}
            yield {"args": [sys.executable, "-c", WORKER], "env": env, "cwd": ROOT, "file_size_limit": None}

    outputs = run_on_free_ports(2, launches, tmp_path, timeout=180)
    reports = []
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert reports[0]["figures"] == reports[1]["figures"]
    figures, sigmoids, labels = (reports[0][k] for k in ("figures", "sigmoids", "labels"))
    sigmoids, labels = np.array(sigmoids), np.array(labels)
    assert figures["examples"] == 21
    assert figures["map"] == pytest.approx(average_precision_score(labels, sigmoids), abs=1e-6)
    f1 = f1_score(labels, sigmoids >= 0.5, average=None, zero_division=0)
    assert [figures["per_class_f1"][c] or 0.0 for c in "rgb"] == pytest.approx(list(f1), abs=1e-6)


def test_a_multilabel_tfrecord_run_trains_and_reports_map(tmp_path, monkeypatch, capsys):
    """data=tfrecord with several image/class/label values per record: the run's figures are the
    multi-label ones, its classes the records' texts."""
    import json

    from helpers import cli_in_process
    from test_multilabel_data import CLASSES, write_multilabel_records

    write_multilabel_records(tmp_path / "rec" / "train", 64)
    write_multilabel_records(tmp_path / "rec" / "validation", 16, seed=1)
    run = tmp_path / "run"
    code, out, err = cli_in_process(
        monkeypatch, capsys, "resnet-train", "data=tfrecord", f"data.train_files={tmp_path}/rec/train-*",
        f"data.eval_files={tmp_path}/rec/validation-*", "data.image_size=32", "data.task=multilabel",
        "augment=none", "depth=8", "epochs=4", "batch_size=16", "runtime=one_device", "runtime.precision=float32",
        f"hydra.run.dir={run}",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["examples"] == 16 and set(results["test"]["per_class_f1"]) == set(CLASSES)
    assert results["test"]["map"] > MAP_LEARNT and "Test mAP" in out, results["test"]  # learnt from every label


def test_confident_logits_keep_their_order_in_map():
    """A float32 sigmoid is exactly 1.0 from a logit of ~17 on: a negative at 20 and a positive at 25
    would tie and halve the class's AP. Evaluation takes the sigmoid of the gathered logits in float64."""
    import keras
    import tensorflow as tf

    from resnet_train.training.multilabel_eval import MultilabelEvaluation

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        inputs = keras.Input((2,))
        model = keras.Model(inputs, keras.layers.Identity()(inputs))  # the logits are the inputs
    logits = np.array([[20.0, -3.0], [25.0, 2.0], [-4.0, 30.0], [18.0, 35.0]], np.float32)
    labels = np.array([[0, 0], [1, 1], [0, 0], [1, 1]], np.float32)
    assert (tf.sigmoid(logits).numpy()[[0, 1, 3], 0] == 1.0).all()  # the ties float32 would make
    batches = tf.data.Dataset.from_tensor_slices((logits, labels, np.ones(4, np.float32))).batch(4)
    figures = MultilabelEvaluation(model, strategy, 0.5, ["a", "b"])(strategy.experimental_distribute_dataset(batches))
    expected = [average_precision_score(labels[:, c], logits[:, c]) for c in range(2)]  # ranked by the logits
    assert list(figures["per_class_ap"].values()) == pytest.approx(expected) and expected[0] < 1.0


def test_a_multilabel_run_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    """Multi-hot labels mixed by mixup, BCE, best/ chosen by the validation mAP: a run stopped
    mid-epoch and resumed ends with the uninterrupted run's weights, records and test figures."""
    from helpers import StepStop, compose
    from test_faults import assert_same_run
    from test_multilabel_data import make_multilabel_folder

    from resnet_train.errors import Preempted
    from resnet_train.training.loop import train_and_evaluate

    make_multilabel_folder(tmp_path / "images", n=80)
    pieces = (
        "data=folder", f"data.path={tmp_path / 'images'}", "data.task=multilabel", "augment=none",
        "augment.mixup_alpha=0.4", "data.val_split=16", "checkpoint.best_metric=map", "depth=8", "epochs=2",
        "batch_size=16", "runtime=one_device", "runtime.precision=float32",
    )  # fmt: skip
    straight = tmp_path / "straight"
    train_and_evaluate(compose(*pieces), straight)
    total = json.loads((straight / "results.json").read_text())["steps"]  # 48 images: 3 steps an epoch
    StepStop(monkeypatch, at=total // 2)  # asked after step 3: stops at 4
    run = tmp_path / "run"
    with pytest.raises(Preempted, match=f"at step {total // 2 + 1} of {total}"):  # mid-epoch 2
        train_and_evaluate(compose(*pieces), run)
    train_and_evaluate(compose(*pieces), run)
    assert_same_run(run, straight, steps=total)
    assert json.loads((run / "results.json").read_text())["best_val_map"] > 0


def test_per_class_figures_go_to_mlflow_under_names_it_takes():
    from resnet_train.report.tracking import _flat_numbers

    flat = _flat_numbers({"test": {"map": 0.5, "per_class_f1": {"dog's (big)": 0.25, "cat": None}}})
    assert flat == {"results/test/map": 0.5, "results/test/per_class_f1/dog_s _big_": 0.25}


@pytest.mark.parametrize("source_task, head_is_new", [("multiclass", True), ("multilabel", False)])
def test_init_from_a_run_of_another_task_gets_a_new_head_whatever_the_class_names(
    monkeypatch, source_task, head_is_new
):
    """A multi-label run fine-tuned from a single-label one with the same class names: its softmax
    logits are no sigmoid's (a softmax is shift-invariant), so the head starts fresh; the body loads."""
    import numpy as np

    from resnet_train import models
    from resnet_train.training import finetune

    source, target = models.build(8, 3), models.build(8, 3)
    monkeypatch.setattr(finetune, "load_source", lambda spec: (source, spec, ["a", "b", "c"], source_task))
    done = finetune.initialise_from(target, "run", ["a", "b", "c"], task="multilabel")
    assert (done["new"] == ["logits"]) is head_is_new and "stem_conv" in done["loaded"]
    same_head = np.array_equal(target.get_layer("logits").get_weights()[0], source.get_layer("logits").get_weights()[0])
    assert same_head is not head_is_new
