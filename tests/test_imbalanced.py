"""Imbalanced classes: data.class_weights, data.sampling=balanced, balanced accuracy and macro-F1
(checked against scikit-learn's), checkpoint.best_metric; on an imbalanced split of the digits."""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score

from resnet_train.errors import ConfigError
from resnet_train.report import class_metrics

COUNTS = (150, 30, 15)  # digits 0, 1, 2: a 10:2:1 split


@pytest.fixture(scope="module")
def imbalanced_digits(tmp_path_factory):
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("imbalanced") / "digits"
    digits = load_digits()
    for digit, count in enumerate(COUNTS):
        folder = root / str(digit)
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == digit][:count]):
            Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _pairs(confusion):
    """(true, predicted) labels with the counts of a confusion matrix."""
    rows, cols = np.nonzero(confusion)
    reps = confusion[rows, cols].astype(int)
    return np.repeat(rows, reps), np.repeat(cols, reps)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_and_macro_f1_are_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    truth = rng.choice(4, 200, p=[0.7, 0.2, 0.1, 0.0])  # class 3 never true
    predicted = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 4, 200))
    confusion = np.zeros((4, 4))
    np.add.at(confusion, (truth, predicted), 1)
    assert class_metrics.balanced_accuracy(confusion) == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert class_metrics.macro_f1(confusion) == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_auto_class_weights_are_inverse_frequency_with_mean_one_per_example():
    weights = class_metrics.class_weights([150, 30, 15, 0], "auto")
    assert weights == pytest.approx([195 / (3 * 150), 195 / (3 * 30), 195 / (3 * 15), 0.0])
    assert np.dot(weights, [150, 30, 15, 0]) == pytest.approx(195)  # the mean weight of an example is 1
    assert class_metrics.class_weights([5, 5], [1, 3]) == [0.5, 1.5]  # relative weights, scaled to a mean of 1
    with pytest.raises(ConfigError, match="must list 2 non-negative weights, one per class"):
        class_metrics.class_weights([5, 5], [1, 2, 3])
    with pytest.raises(ConfigError, match="weight 0 to every class with training examples"):
        class_metrics.class_weights([5, 0], [0, 1])


@pytest.mark.parametrize("sampling", ["natural", "balanced"])
@pytest.mark.parametrize("setting", ["auto", [1, 2, 3], [0, 1, 1]], ids=["auto", "list", "list-with-0"])
def test_a_sampled_example_weighs_1_on_average_with_either_sampling(setting, sampling):
    """The weights a run resolves (inputs._imbalance) times the classes its pipeline draws: the mean
    example weight is 1 in every combination, so the weights never scale the step size. Balanced
    sampling already draws the classes equally often: auto then weighs each 1 (not once more by
    inverse frequency: 10x on the rarest class of 10:2:1, a mean weight of 2.31)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from resnet_train.data import pipeline
    from resnet_train.training import inputs

    info = SimpleNamespace(encoded=False, class_counts=list(COUNTS), class_names=["0", "1", "2"], name="digits")
    cfg = OmegaConf.create({"data": {"class_weights": setting, "sampling": sampling}})
    weights, balanced = inputs._imbalance(cfg, SimpleNamespace(info=info))
    labels = np.repeat(np.arange(3), COUNTS)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(195, dtype=np.int64), labels))
    drawn = np.concatenate(
        [y.numpy() for e in range(4) for _, y in pipeline.train_batches(ds, 195, 15, 7, e, balanced_classes=balanced)]
    )
    assert len(drawn) == 4 * 195
    if sampling == "natural":  # every example once per epoch
        assert np.mean(np.take(weights, drawn)) == pytest.approx(1.0)
    else:  # 780 draws, each class with p = 1/3: the mean over classes is 1, the draws' mean within 4 sd of it
        assert np.mean(weights) == pytest.approx(1.0)
        assert np.mean(np.take(weights, drawn)) == pytest.approx(1.0, abs=4 * np.std(weights) / np.sqrt(780) + 1e-9)
    if setting == "auto" and sampling == "balanced":
        assert weights == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("soft", [False, True])
def test_class_weights_multiply_each_examples_loss(soft):
    """The Trainer's gradient with class weights is the gradient of sum(w[y] * CE) / batch."""
    from resnet_train.runtime import devices

    strategy = devices.make_strategy("one_device")
    weights = [0.5, 2.0, 1.0, 4.0]
    import keras

    from resnet_train.training.trainer import Trainer

    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    trainer = Trainer(model, keras.optimizers.SGD(0.1), strategy, 16, num_classes=4, class_weights=weights)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (16, 8, 8, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 4, 16), tf.int64)
    if soft:
        labels = tf.one_hot(labels, 4) * 0.7 + tf.one_hot(tf.roll(labels, 1, 0), 4) * 0.3
    grads, _, _ = trainer._gradients_fn(images, labels)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        dense = labels if soft else tf.one_hot(labels, 4)
        per_example = tf.nn.softmax_cross_entropy_with_logits(dense, logits)
        loss = tf.reduce_sum(per_example * tf.reduce_sum(dense * tf.constant(weights), -1)) / 16
    for ours, reference in zip(grads, tape.gradient(loss, model.trainable_variables)):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)


def test_balanced_sampling_draws_each_class_equally_often_and_resumes_exactly():
    from resnet_train.data import pipeline

    labels = np.array([0] * 150 + [1] * 30 + [2] * 15, np.int64)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(195, dtype=np.int64), labels))

    def epoch(skip=0, epoch=2):
        batches = pipeline.train_batches(ds, 195, 15, 7, epoch, skip_batches=skip, balanced_classes=[0, 1, 2])
        return [(x.numpy().tolist(), y.numpy().tolist()) for x, y in batches]

    drawn = [y for _, ys in epoch() for y in ys]
    assert len(drawn) == 195 // 15 * 15
    # 195 draws of p = 1/3: 65 each, standard deviation 6.6; natural sampling would give 150 / 30 / 15.
    assert all(abs(drawn.count(c) - 65) < 4 * 6.6 for c in range(3)), [drawn.count(c) for c in range(3)]
    assert epoch() == epoch() and epoch(skip=5) == epoch()[5:]  # seeded: a resumed epoch continues it
    assert epoch(epoch=3) != epoch()  # another epoch, another draw


def test_an_imbalanced_run_weights_samples_reports_and_chooses_best_by_macro_f1(cli, imbalanced_digits, tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "data=folder", f"data.path={imbalanced_digits}", "data.val_fraction=0.2", "data.val_split=0.25"]
    args += ["data.class_weights=auto", "data.sampling=balanced", "checkpoint.best_metric=macro_f1", "epochs=3"]
    args += ["batch_size=16", "data.limit_train=null"]
    done = cli(*args, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "Training examples per class:" in log and "sampled equally often" in log
    assert "bal.acc" in log and "macro-F1" in log
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    assert len(evals) == 3 and all("balanced_accuracy" in r and "macro_f1" in r for r in evals)
    best = max(evals, key=lambda r: r["macro_f1"])  # the first of equals, as save_best keeps it
    assert tf.train.latest_checkpoint(str(run / "checkpoints" / "best")).endswith(f"ckpt-{best['step']}")
    results = json.loads((run / "results.json").read_text())
    assert results["best_metric"] == "macro_f1" and results["best_val_macro_f1"] == pytest.approx(best["macro_f1"])

    # resnet-eval on the test split: the Trainer's on-device confusion gave the same figures, and
    # both are scikit-learn's on the predictions.
    done = cli(f"run={run}", "checkpoint=last", entry="resnet-eval")
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = json.loads((run / "eval" / "test.json").read_text())
    truth, predicted = _pairs(np.array(evaluated["confusion_matrix"]))
    assert evaluated["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert evaluated["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    for key in ("balanced_accuracy", "macro_f1", "accuracy"):
        assert results["test"][key] == pytest.approx(evaluated[key], abs=1e-6), key


@pytest.mark.parametrize(
    "args,message",
    [
        (["data.class_weights=[1,2]"], "data.class_weights must list 10 non-negative weights, one per class (got 2)"),
        (["data.class_weights=inverse"], "data.class_weights must be null, auto or a list of one weight per class"),
        (["data.sampling=oversample"], "data.sampling must be natural or balanced"),
        (["checkpoint.best_metric=f2"], "checkpoint.best_metric must be one of accuracy, balanced_accuracy, macro_f1"),
    ],
    ids=["weights-count", "weights-word", "sampling", "best-metric"],
)
def test_bad_imbalance_settings_are_one_line_exit_2(cli, tmp_path, args, message):
    done = cli(*TINY, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
