"""distill.teacher (Hinton et al. 2015): the loss is the formula, with its gradient, for hard and
soft labels; the teacher only teaches (no gradient, weights and batch-norm statistics unchanged,
not in the checkpoint); a distilled run trains under 2 replicas with gradient accumulation,
reports the teacher's test figures, resumes with its teacher (wherever it now lives) and refuses
another; stopped mid-epoch, it resumes exactly. A teacher with other classes: tests/test_bad_input.py.

Whether a distilled student beats the same student trained alone is measured, not tested here
(scripts/distill_margin.py; the README's Distillation figures): it shows after a few hundred steps.
As a test of one seed it took 207 s of CPU alone and 375 s late in a full suite run on 2 cores of
an AMD EPYC Zen 3, a fifth of the suite's 10-minute budget."""

import json
import logging
import shutil
from types import SimpleNamespace

import keras
import keras_hub  # noqa: F401 (the [pretrained] extra, in the test extras)
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, compose, file_digests

from resnet_train.data import pipeline, synthetic
from resnet_train.errors import RunDirError, UserError
from resnet_train.runtime import devices as runtime
from resnet_train.training import distill
from resnet_train.training.loop import train_and_evaluate
from resnet_train.training.runs import load_run
from resnet_train.training.trainer import Trainer


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _model(seed, classes=4, batch_norm=False):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    if batch_norm:  # moving statistics a training-mode call would change
        x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_the_trainers_loss_and_gradient_are_the_formula(labels):
    """(1 - a) CE + a T^2 KL(softmax(t/T) || softmax(s/T)) per example, through the Trainer's own
    step (its CE: sparse for hard labels, dense for mixup's soft ones); the gradient of the batch
    mean in a linear student's weights is x^T ((1 - a)(softmax(s) - y) + a T (softmax(s/T) - softmax(t/T))) / B."""
    T, a, B = 3.0, 0.7, 8
    student, teacher = _model(0), _model(1)
    teacher.layers[-1].kernel.assign(teacher.layers[-1].kernel * 20.0)  # a confident teacher: p far from uniform
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (B, 4, 4, 3)).astype(np.float32)
    y = rng.dirichlet(np.ones(4), B).astype(np.float32) if labels == "soft" else rng.integers(0, 4, B)
    trainer = Trainer(student, keras.optimizers.SGD(0.1), tf.distribute.get_strategy(), B, num_classes=4,
                      distill=distill.Distillation(teacher, T, a, {}))  # fmt: skip
    grads, logits, per_example = trainer._gradients_fn(tf.constant(images), tf.constant(y))

    s, t = logits.numpy().astype(np.float64), teacher(images).numpy().astype(np.float64)
    onehot = y if labels == "soft" else np.eye(4)[y]
    p, q = _softmax(t / T), _softmax(s / T)
    expected = (1 - a) * -(onehot * np.log(_softmax(s))).sum(-1) + a * T * T * (p * np.log(p / q)).sum(-1)
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (a * T * T * (p * np.log(p / q)).sum(-1)).mean() > 0.1  # the soft term is not negligible here
    d_logits = ((1 - a) * (_softmax(s) - onehot) + a * T * (q - p)) / B
    kernel, bias = (g.numpy() for g in grads)
    np.testing.assert_allclose(kernel, images.reshape(B, -1).T / 255.0 @ d_logits, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bias, d_logits.sum(0), rtol=1e-4, atol=1e-7)


def test_keras_logits_distillation_is_the_same_term_except_where_it_clips():
    """distill.py's reason for its own term: Keras' LogitsDistillation with a KLDivergence instance
    (its default, the string "kl_divergence", skips the softmax and T^2: see distill.py) gives the
    same batch mean where every probability is above 1e-7, but clips below it, where its value is
    off and the clipped class gets no gradient (ours: T (q - p), -1/3 here)."""

    def keras_term(temperature):
        return keras.distillation.LogitsDistillation(temperature, loss=keras.losses.KLDivergence()).compute_loss

    rng = np.random.default_rng(1)
    s, t = (tf.constant(rng.normal(0, 2, (6, 5)), tf.float32) for _ in range(2))
    assert float(tf.reduce_mean(distill.soft_loss(s, t, 3.0))) == pytest.approx(float(keras_term(3.0)(t, s)), rel=1e-5)

    confident, uniform = tf.Variable([[-40.0, 0.0, 0.0]]), tf.constant([[0.0, 0.0, 0.0]])
    p, q = np.full(3, 1 / 3), _softmax(np.array([-40.0, 0.0, 0.0]))
    with tf.GradientTape(persistent=True) as tape:
        ours = distill.soft_loss(confident, uniform, 1.0)[0]
        theirs = keras_term(1.0)(uniform, confident)
    assert float(ours) == pytest.approx((p * np.log(p / q)).sum(), rel=1e-5)  # 40/3 + log(2/3)
    assert tape.gradient(ours, confident).numpy()[0, 0] == pytest.approx(-1 / 3, rel=1e-5)  # T (q - p)
    assert float(theirs) == pytest.approx((p * np.log(p / np.maximum(q, 1e-7))).sum(), rel=1e-5)  # 4.74, not 12.9
    assert abs(tape.gradient(theirs, confident).numpy()[0, 0]) < 1e-9


def _batches(strategy, data, micro_batch, accumulate, epoch):
    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(micro_batch)
        return pipeline.train_batches(data.train, 64, micro_batch * accumulate, 0, epoch, replica_batch=per_replica,
                                      pipelines=ctx.num_input_pipelines, pipeline_id=ctx.input_pipeline_id)  # fmt: skip

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def test_the_teacher_only_teaches_under_two_replicas_and_accumulation():
    """Trainable and in training mode the teacher would move: it gets no gradient (None, not zero),
    its weights and batch-norm statistics stay bit for bit, and the student's loss falls."""
    strategy = runtime.make_strategy("mirrored", cpu_replicas=2)
    with strategy.scope():
        student, teacher = _model(0), _model(1, batch_norm=True)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(student.trainable_variables)
    teaching = distill.Distillation(teacher, 2.0, 0.5, {})
    trainer = Trainer(student, optimizer, strategy, 8, num_classes=4, accumulate_steps=2, distill=teaching)
    data = synthetic.load(image_shape=(4, 4, 3), num_classes=4, train_size=64, test_size=8, seed=0)
    before = [w.numpy().copy() for w in teacher.weights]
    losses = []
    for epoch in range(6):
        trainer.reset_train_metrics()
        trainer.train_steps(_batches(strategy, data, 8, 2, epoch), 4)  # 64 images: 4 steps of 2 x 8
        losses.append(trainer.train_metrics()["loss"])
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, teacher.weights))
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 4, 4, 3)), tf.float32)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(teaching.loss(0.0, student(images), teaching.teacher_logits(images)))
    assert teacher.trainable_weights and all(g is None for g in tape.gradient(value, teacher.trainable_weights))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A TINY run of 1 epoch, 4 steps (checkpoints after steps 2 and 4: checkpoint=auto is the last)."""
    path = tmp_path_factory.mktemp("distill") / "teacher"
    return path, train_and_evaluate(compose(*TINY, "epochs=1", "checkpoint.every_steps=2", "seed=5"), path)


STUDENT = (*TINY, "runtime=mirrored", "runtime.cpu_replicas=2", "batch_size=16", "optimizer.accumulate_steps=2",
           "augment.mixup_alpha=0.4", "logger=[]", "epochs=2")  # fmt: skip


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    """The STUDENT (8 steps) trained once per module for both tests below (each run traces its
    steps anew: the runs, not the steps, cost): straight through (its log kept), and stopped after
    step 5, then resumed with its teacher moved to another folder meanwhile (the same weights)."""
    from helpers import StepStop

    from resnet_train.errors import Preempted

    source, _ = teacher
    root, lines, logger = tmp_path_factory.mktemp("student"), _Lines(), logging.getLogger()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    try:
        straight = train_and_evaluate(compose(*STUDENT, f"distill.teacher={source}"), root / "straight")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    moved = root / "moved_teacher"
    with pytest.MonkeyPatch.context() as monkeypatch:
        stop = StepStop(monkeypatch, at=5)
        with pytest.raises(Preempted, match="at step 6 of 8"):
            train_and_evaluate(compose(*STUDENT, f"distill.teacher={source}"), root / "run")
        stop.steps = 0
        shutil.move(source, moved)  # not a copy: nothing at its old path while the run resumes
        try:
            resumed = train_and_evaluate(compose(*STUDENT, f"distill.teacher={moved}"), root / "run")
        finally:
            shutil.move(moved, source)
    return SimpleNamespace(straight=root / "straight", straight_results=straight, log="\n".join(lines.lines),
                           run=root / "run", resumed=resumed, resumed_steps=stop.steps, moved=moved)  # fmt: skip


def test_a_distilled_run_reports_its_teacher_resumes_with_it_and_refuses_another(teacher, distilled, tmp_path):
    source, teacher_results = teacher
    first = distilled.straight_results
    record = json.loads((distilled.straight / distill.RECORD).read_text())
    test = record["test"]  # the log (train.log): the teacher's figures at the start, beside the student's at the end
    assert (
        f"Teacher {source}: test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f} on 64 images" in distilled.log
    )
    assert f"Test accuracy: student {first['test']['accuracy']:.4f}, teacher {test['accuracy']:.4f}" in distilled.log
    assert first["teacher"] == record and record["checkpoint"].endswith("ckpt-4") and record["weights"] == "raw"
    # The teacher's test figures: what its own run measured on the same split, with the same weights.
    assert record["test"]["accuracy"] == teacher_results["test"]["accuracy"]
    assert record["test"]["loss"] == pytest.approx(teacher_results["test"]["loss"], rel=1e-5)
    # Not in the checkpoint: the same variables as a run without a teacher (the teacher's own run).
    keys = {k for k, _ in tf.train.list_variables(first["checkpoint"])}
    assert keys == {k for k, _ in tf.train.list_variables(teacher_results["checkpoint"])}

    # The stopped run resumed with the same teacher in another folder: loaded from there, the same
    # weights, its test figures read back (distilled.run: the first start's teacher.json).
    resumed = distilled.resumed
    assert resumed["steps"] == 2 * 128 // 32 and resumed["teacher"]["source"] == str(distilled.moved)
    assert resumed["teacher"]["weights_sha256"] == record["weights_sha256"]
    assert resumed["teacher"]["test"] == record["test"]

    run = tmp_path / "student"  # a copy: the refusal must leave it as it was
    shutil.copytree(distilled.run, run)
    before = file_digests(run)
    other = source / "checkpoints" / "ckpt-2"  # after its second step: other weights
    other_weights = distill.fingerprint(load_run(source, str(other)).model)
    with pytest.raises(RunDirError) as refused:
        train_and_evaluate(compose(*STUDENT, "epochs=3", f"distill.teacher={other}"), run)
    assert str(refused.value) == (
        f"distill.teacher={other} (weights {other_weights[:12]}) is not the teacher {run} was "
        f"trained with, distill.teacher={source} (weights {record['weights_sha256'][:12]}): give it that teacher "
        f"to continue, or start a new hydra.run.dir"
    )
    assert file_digests(run) == before


@pytest.fixture(scope="module")
def hub_classifiers(tmp_path_factory):
    """keras-hub image classifier presets (a one-block ResNet): 10 classes and 3."""
    presets = {}
    for classes in (10, 3):
        keras.utils.set_random_seed(classes)
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64],
            stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block",
            use_pre_activation=False, image_shape=(None, None, 3),
        )  # fmt: skip
        classifier = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=classes)
        presets[classes] = tmp_path_factory.mktemp("hub") / f"classifier{classes}"
        classifier.save_to_preset(str(presets[classes]))
    return presets


DIGITS = SimpleNamespace(
    info=SimpleNamespace(num_classes=10, class_names=[str(i) for i in range(10)], image_shape=(32, 32, 3), test_size=8),
    splits=SimpleNamespace(test=None),
)  # what distill.load reads of inputs.Input


def test_a_keras_hub_classifier_teaches_in_float32_on_our_uint8_images(hub_classifiers, tmp_path):
    """Its own input scaling in front (ImageNet's, as keras-hub's ResNets use), logits out, built
    in float32 under a bfloat16 student's policy (which stays the global one)."""
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    classifier = keras_hub.models.ImageClassifier.from_preset(str(hub_classifiers[10]))  # in float32
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    expected = classifier(((images - mean) / std).astype(np.float32)).numpy()  # (bfloat16's differ by ~1e-2)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    cfg = compose(*TINY, f"distill.teacher=keras_hub:{hub_classifiers[10]}")
    teaching = distill.load(cfg, DIGITS, tf.distribute.get_strategy(), tmp_path)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert teaching.teacher.dtype_policy.name == "float32" and not teaching.teacher.trainable_weights
    np.testing.assert_allclose(teaching.teacher_logits(tf.constant(images)).numpy(), expected, rtol=1e-4, atol=1e-5)

    cfg = compose(*TINY, f"distill.teacher=keras_hub:{hub_classifiers[3]}")
    with pytest.raises(UserError) as refused:
        distill.load(cfg, DIGITS, tf.distribute.get_strategy(), tmp_path)
    assert str(refused.value) == (
        f"distill.teacher=keras_hub:{hub_classifiers[3]} has 3 classes; this run's data has 10 (0, 1, 2, 3, ... 9): "
        f"distil from a teacher trained on the same classes, in the same order"
    )


def test_a_distilled_run_stopped_mid_epoch_resumes_exactly(distilled):
    """Stopped after step 5 of 8 (2 replicas, 2 micro-batches, mixup), resumed with its teacher
    (moved to another folder: the same weights): the weights, optimizer, records and results of the
    same run trained straight through (both runs: the distilled fixture)."""
    from test_faults import assert_same_run

    assert distilled.resumed_steps == 8 - 6
    assert_same_run(distilled.run, distilled.straight, steps=8)
