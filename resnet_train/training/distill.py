"""Knowledge distillation (Hinton et al. 2015): distill.teacher's softened predictions as a second target.

    loss = (1 - alpha) CE(labels, student) + alpha T^2 KL(softmax(teacher / T) || softmax(student / T))

per example, then averaged over the global batch with the rest of the Trainer's loss (class
weights, decay, loss scaling as without a teacher). The CE term is the Trainer's own (soft labels
of mixup / cutmix, label smoothing). The teacher runs in the same compiled step, on the same
augmented micro-batch, in inference mode (batch norm's moving statistics, nothing updated), in
float32 whatever the student's policy, outside the GradientTape and behind tf.stop_gradient. It is
no part of the checkpoint: its identity (source, checkpoint, a hash of its weights) is kept in
<run>/teacher.json with its test figures (measured once, when the run starts), and a resume with
another teacher is refused.

Keras 3.15's keras.distillation.LogitsDistillation is not used. With its default loss, the string
"kl_divergence", it is not this term at all: the string resolves to the function
keras.losses.kl_divergence, not a KLDivergence instance, so its softmax-and-T^2 branch is skipped
and the KL is taken of the scaled logits clipped to [1e-7, 1] as if they were probabilities. Given
loss=keras.losses.KLDivergence() it is the term, but clipped: both distributions to [1e-7, 1], off
where the student gives a class less than 1e-7 (that class then gets no gradient; a confident
student at T = 1 gets there at a logit gap of 16), and as a batch mean, where the Trainer needs
per-example terms (averaged over the global batch across replicas and micro-batches). Both shown
in tests/test_distill.py. Keras' Distiller weighs the student's own loss by student_loss_weight:
alpha = 1 - student_loss_weight.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from resnet_train.errors import RunDirError, UserError, first_line
from resnet_train.report.metrics import write_json
from resnet_train.training import finetune, pretrained, run_dir

log = logging.getLogger(__name__)

RECORD = Path("teacher.json")  # the teacher's identity and test figures, beside the run's config


def soft_loss(student_logits, teacher_logits, temperature: float):
    """Per example T^2 KL(softmax(teacher / T) || softmax(student / T)), from log-softmaxes (exact
    for any probability; its gradient in the student's logits is T (softmax(s/T) - softmax(t/T)))."""
    log_p = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / temperature)
    log_q = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature)
    return temperature * temperature * tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), -1)


def loss(hard, student_logits, teacher_logits, temperature: float, alpha: float):
    """Per example (1 - alpha) hard + alpha soft_loss: `hard` is the student's cross-entropy with the labels."""
    return (1.0 - alpha) * hard + alpha * soft_loss(student_logits, teacher_logits, temperature)


class Distillation:
    """The teacher and the loss, as the Trainer's compiled step calls them."""

    def __init__(self, teacher, temperature: float, alpha: float, record: dict, test_batches=None):
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        self.record = record  # source, checkpoint, weights hash; measure() adds the test figures
        self.test_batches = test_batches  # () -> the distributed test split, for measure()

    def teacher_logits(self, images):
        """Called outside the GradientTape: no gradient reaches the teacher, none is recorded."""
        return tf.stop_gradient(tf.cast(self.teacher(images, training=False), tf.float32))

    def loss(self, hard, student_logits, teacher_logits):
        return loss(hard, student_logits, teacher_logits, self.temperature, self.alpha)


def load(cfg, data, strategy, workdir: Path) -> Distillation | None:
    """distill.teacher loaded under the strategy (each replica its copy), checked against the data
    (inputs.Input: classes, image shape) and, for a run with progress, against its own teacher."""
    spec, info = cfg.distill.teacher, data.info
    if not spec:
        check_same_teacher(workdir, None)
        return None
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # the teacher's own precision
    try:
        with strategy.scope():
            teacher, record, classes = (
                _hub_teacher(spec, info) if spec.startswith(pretrained.HUB) else _run_teacher(spec)
            )
    finally:
        keras.mixed_precision.set_global_policy(policy)
    teacher.trainable = False
    _check_fits(spec, teacher, classes, info)
    record["weights_sha256"] = fingerprint(teacher)
    check_same_teacher(workdir, record)
    d = cfg.distill
    log.info("Distilling from %s (%s, %s parameters, weights %s): temperature %g, alpha %g", spec, teacher.name,
             f"{record['parameters']:,}", record["weights_sha256"][:12], d.temperature, d.alpha)  # fmt: skip
    test = data.splits.test, info.test_size
    return Distillation(teacher, d.temperature, d.alpha, record, lambda: data.distribute_eval(*test))


def _run_teacher(spec: str):
    """A run directory's model (checkpoint=auto, EMA weights when it kept them: what resnet-eval
    evaluates) or a checkpoint inside one: (model, record, class names)."""
    from resnet_train.training.runs import load_run

    source, teacher_dir, _, _ = finetune.source_run(spec, "distill.teacher")
    loaded = load_run(teacher_dir, "auto" if source == teacher_dir else str(source))
    if getattr(loaded.info, "task", "multiclass") == "multilabel":  # its logits are sigmoids' (per label)
        raise UserError(
            f"distill.teacher={spec} is a multi-label run (a sigmoid per label); its logits are not one "
            f"distribution over the classes to distill a single-label student from: choose a single-label run"
        )
    record = {"source": spec, "checkpoint": loaded.checkpoint, "weights": loaded.weights}
    return (
        loaded.model,
        {**record, "model": loaded.model.name, "parameters": _params(loaded.model)},
        list(loaded.info.class_names),
    )


def _hub_teacher(spec: str, info):
    """A keras-hub image classifier (preset name or directory) taking our uint8 images: its own
    input scaling in front, logits out (the log of its probabilities if it ends in a softmax)."""
    import keras_hub

    from resnet_train.models.layers import Standardize

    try:
        classifier = keras_hub.models.ImageClassifier.from_preset(spec[len(pretrained.HUB) :])
    except Exception as error:  # noqa: BLE001 (keras-hub raises many kinds: missing file, no network, ...)
        raise UserError(
            f"distill.teacher={spec}: not a keras-hub image classifier preset that could be loaded "
            f"({first_line(error)}); a preset name needs the internet once (Kaggle)"
        ) from None
    mean, std = pretrained.input_statistics(spec)
    inputs = keras.Input(shape=tuple(info.image_shape), name="images")
    x = Standardize(mean, std, dtype="float32")(keras.layers.Rescaling(1.0, dtype="float32")(inputs))
    out = classifier(x)
    if keras.activations.get(classifier.activation) is keras.activations.softmax:  # log p: softmax(log p) = p
        out = keras.layers.Lambda(lambda p: keras.ops.log(keras.ops.maximum(p, 1e-30)))(out)
    teacher = keras.Model(inputs, out, name=f"keras_hub_{classifier.name}")
    record = {"source": spec, "checkpoint": None, "model": teacher.name, "parameters": _params(teacher)}
    return teacher, record, None  # a preset names no classes: their number is checked


def _params(model) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))


def _check_fits(spec: str, teacher, classes, info) -> None:
    """The teacher's classes are the data's (names and order when it has them), its input the data's shape."""
    count = int(teacher.output_shape[-1])
    ours = [str(c) for c in info.class_names]
    if count != info.num_classes or (classes is not None and [str(c) for c in classes] != ours):
        theirs = f"{count} classes" + (f" ({_names(classes)})" if classes is not None else "")
        raise UserError(
            f"distill.teacher={spec} has {theirs}; this run's data has {info.num_classes} ({_names(ours)}): "
            f"distil from a teacher trained on the same classes, in the same order"
        )
    wanted = tuple(int(s) for s in info.image_shape)
    takes = tuple(teacher.input_shape[1:])
    if any(t is not None and t != w for t, w in zip(takes, wanted)):
        raise UserError(
            f"distill.teacher={spec} takes {'x'.join(map(str, takes))} images, this run's are "
            f"{'x'.join(map(str, wanted))}: train the teacher at this image size"
        )


def _names(names) -> str:
    shown = ", ".join(str(n) for n in names[:4])
    return shown + (f", ... {names[-1]}" if len(names) > 4 else "")


def fingerprint(model) -> str:
    """sha256 of every weight's bytes in order (batch-norm statistics included): the same teacher
    wherever its files now live, another one after any change."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{weight.path}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _recorded(workdir: Path) -> dict | None:
    try:
        return json.loads((workdir / RECORD).read_text())
    except (OSError, ValueError):
        return None


def check_same_teacher(workdir: Path, record: dict | None) -> None:
    """A run with progress continues only with the teacher it was trained with (or none, if none)."""
    if not run_dir.has_progress(workdir):
        return
    theirs = _recorded(workdir)
    if record is None and theirs is None:
        return
    new = "or start a new hydra.run.dir"
    if theirs is None:  # (a teacher.json lost from a distilled run reads the same)
        raise RunDirError(f"{workdir} was trained without a teacher: drop distill.teacher to continue it, {new}")
    was = f"distill.teacher={theirs.get('source')} (weights {str(theirs.get('weights_sha256'))[:12]})"
    if record is None:
        raise RunDirError(f"{workdir} was trained with {was}: give it that teacher to continue, {new}")
    if theirs.get("weights_sha256") != record["weights_sha256"]:
        raise RunDirError(
            f"distill.teacher={record['source']} (weights {record['weights_sha256'][:12]}) is not the teacher "
            f"{workdir} was trained with, {was}: give it that teacher to continue, {new}"
        )


def measure(distillation: Distillation | None, workdir: Path, step: int, rt, batch_size: int) -> None:
    """The teacher's figures on the test split, into its record (results.json's "teacher"): measured
    when the run starts (on every worker: an evaluation is collective) and kept in teacher.json; a
    resumed run reads them back."""
    if distillation is None:
        return
    from resnet_train.training.trainer import Trainer

    record, recorded = distillation.record, _recorded(workdir) or {}
    if step and "test" in recorded:
        record["test"] = recorded["test"]
    else:  # the Trainer's evaluation, as for the student (it needs no optimizer)
        classes = int(distillation.teacher.output_shape[-1])  # the data's (load checked)
        record["test"] = Trainer(distillation.teacher, None, rt.strategy, batch_size, num_classes=classes).evaluate(
            distillation.test_batches()
        )
        if rt.is_chief:
            write_json(workdir / RECORD, record)
    test = record["test"]
    log.info("Teacher %s: test accuracy %.4f, loss %.4f on %d images", record["source"], test["accuracy"],
             test["loss"], test["examples"])  # fmt: skip
