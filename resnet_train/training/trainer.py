"""The training and evaluation steps: a tf.GradientTape loop written against tf.distribute.

Written for any strategy: per-example losses are averaged over the *global* batch, per-replica
sums are reduced across replicas, and the weight-decay term is divided by the number of replicas
(tf.nn.scale_regularization_loss) because gradients are summed across them. Under mixed_float16
the optimizer is a keras LossScaleOptimizer: the loss is scaled before the gradients, and a step
whose gradients are not finite is skipped (weights untouched) while the scale is lowered.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from resnet_train.optim import clip_by_global_norm, decayed
from resnet_train.report import class_metrics
from resnet_train.training.finetune import head_gradient_scales
from resnet_train.training.losses import Loss
from resnet_train.training.multilabel_eval import MultilabelEvaluation, exact_matches
from resnet_train.training.replicas import (
    per_replica_bn_statistics,
    poisoned_everywhere_if_any_replica_overflowed,
)

SUM = tf.distribute.ReduceOp.SUM


def top_k(num_classes: int) -> int:
    """The k of every report's top-k accuracy (f"top{k}"): 5, or fewer classes (top-5 of 4 is always 1)."""
    return min(5, num_classes)


def _correct(labels, logits):
    """Examples whose top prediction is the label (with soft labels: the label of most weight)."""
    hard = labels if labels.dtype.is_integer else tf.argmax(labels, -1)
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(hard, tf.int64)), tf.float32))


class Trainer:
    """Owns the compiled steps and the on-device running sums of the current epoch."""

    def __init__(
        self,
        model,
        optimizer,
        strategy,
        global_batch_size: int,
        weight_decay: float = 0.0,
        decay_bn: bool = False,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        loss: str = "ce",
        target_threshold: float | None = None,
        xla: bool = False,
        head_lr_mult: float = 1.0,
        max_nonfinite_steps: int = 0,
        clip_norm: float | None = None,
        accumulate_steps: int = 1,
        class_weights=None,
        distill=None,
        pruner=None,
        multilabel=None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = int(global_batch_size)  # of one micro-batch
        self.accumulate_steps = int(accumulate_steps)
        # data.class_weights: each example's loss times its class's weight (None: all 1)
        self.class_weights = None if class_weights is None else tf.constant(class_weights, tf.float32)
        self.distill = distill  # distill.Distillation: the teacher's soft targets in the loss (None: none)
        self.pruner = pruner  # prune.Pruner: masks the kernels after every optimizer step (None: no pruning)
        self.weight_decay = float(weight_decay)
        self.clip_norm = clip_norm  # global norm of the summed, unscaled gradient (optim.clip_by_global_norm)
        self.decay_mask = [decayed(v, decay_bn) for v in model.trainable_variables]
        self.grad_scale = head_gradient_scales(model, head_lr_mult)
        self.top_k = top_k(num_classes)
        self.num_classes = num_classes
        # multilabel=(threshold, class names) under data.task=multilabel: sigmoid BCE, whatever loss.name says.
        self.loss = Loss(num_classes, label_smoothing, "bce" if multilabel else loss, target_threshold)
        self._correct = functools.partial(exact_matches, threshold=multilabel[0]) if multilabel else _correct
        self._multilabel_eval = MultilabelEvaluation(model, strategy, *multilabel) if multilabel else None
        with strategy.scope():
            # Running sums of the epoch, read only at log points (no host sync per step).
            self._sums = {k: tf.Variable(0.0, trainable=False, name=f"train_{k}") for k in ("loss", "correct", "count")}
            # Consecutive steps with a non-finite loss or gradients. float32/bfloat16 stop at the
            # first (max 0); under float16 the LossScaleOptimizer skips such steps and lowers the
            # scale, and we stop only when it persists for more than runtime.max_nonfinite_steps.
            self._nonfinite = tf.Variable(0, trainable=False, dtype=tf.int32, name="nonfinite_steps")
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        # Only loss scaling skips steps, and only several replicas can disagree about one.
        self._agree_on_skips = (
            isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and strategy.num_replicas_in_sync > 1
        )
        self._moving_statistics = per_replica_bn_statistics(model, strategy)
        # XLA compiles the forward and backward pass; the gradient all-reduce and the optimizer
        # update stay outside it (cross-replica merges cannot run inside a compiled cluster).
        self._gradients = tf.function(self._gradients_fn, jit_compile=True) if xla else self._gradients_fn
        self._train_steps = tf.function(self._train_steps_fn)
        self._eval_all = tf.function(self._eval_all_fn)

    # ---- training -------------------------------------------------------------------------
    def _class_weight(self, labels):
        """Each example's class weight; with soft labels (mixup, cutmix) the labels' mix of them."""
        if labels.dtype.is_integer:
            return tf.gather(self.class_weights, labels)
        return tf.reduce_sum(tf.cast(labels, tf.float32) * self.class_weights, -1)

    def _gradients_fn(self, images, labels):
        model, variables = self.model, self.model.trainable_variables
        teacher = self.distill.teacher_logits(images) if self.distill is not None else None  # outside the tape
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = self.loss(labels, logits)
            if teacher is not None:
                per_example = self.distill.loss(per_example, logits, teacher)
            weighted = per_example if self.class_weights is None else per_example * self._class_weight(labels)
            loss = tf.nn.compute_average_loss(weighted, global_batch_size=self.global_batch_size)
            if self.weight_decay:
                # Coupled L2: d/dw (wd/2 ||w||^2) = wd * w, the paper's (and PyTorch SGD's) decay.
                l2 = tf.add_n([tf.reduce_sum(tf.square(v.value)) for v, m in zip(variables, self.decay_mask) if m])
                loss += tf.nn.scale_regularization_loss(0.5 * self.weight_decay * l2)
            if hasattr(self.optimizer, "scale_loss"):  # LossScaleOptimizer (identity otherwise)
                loss = self.optimizer.scale_loss(loss)
        return tape.gradient(loss, variables), logits, per_example

    def _accumulated(self, micro_batches):
        """The mean gradient over the optimizer step's micro-batches (the gradient of the mean loss
        over all their examples, decay term once), and their summed loss, correct and count. Each
        micro-batch's forward pass waits for the previous one's gradients, so only one micro-batch's
        activations are alive at a time (the point of accumulating)."""
        total = loss_sum = correct = count = None
        for images, labels in micro_batches:
            labels = tf.convert_to_tensor(labels)
            with tf.control_dependencies([g for g in total or [] if g is not None]):
                grads, logits, per_example = self._gradients(images, labels)
            sums = (tf.reduce_sum(per_example), self._correct(labels, logits), tf.cast(tf.shape(labels)[0], tf.float32))
            if total is None:
                total, (loss_sum, correct, count) = grads, sums
            else:
                total = [None if g is None else a + g for a, g in zip(total, grads)]
                loss_sum, correct, count = loss_sum + sums[0], correct + sums[1], count + sums[2]
        if len(micro_batches) > 1:  # (one micro-batch: the gradient as it is, no op per variable)
            total = [None if g is None else g / float(len(micro_batches)) for g in total]
        return total, loss_sum, correct, count

    def _replica_step(self, *micro_batches):
        """One optimizer step on this replica's part of `micro_batches` ((images, labels) pairs:
        one, or optimizer.accumulate_steps of them)."""
        variables = self.model.trainable_variables
        grads, loss_sum, correct, count = self._accumulated(micro_batches)
        if self.clip_norm:
            # Clipping all-reduces the gradients: a non-finite one anywhere makes every replica's NaN.
            grads = clip_by_global_norm(grads, self.clip_norm, getattr(self.optimizer, "dynamic_scale", None))
        bad_grads = None
        if self._agree_on_skips and not self.clip_norm:
            grads, bad_grads = poisoned_everywhere_if_any_replica_overflowed(grads)
        grads = [g * s if s != 1.0 else g for g, s in zip(grads, self.grad_scale)]
        self.optimizer.apply_gradients(zip(grads, variables))
        if bad_grads is None:
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
            bad_grads = 1.0 - tf.cast(finite, tf.float32)
        return loss_sum, correct, count, bad_grads

    def _train_steps_fn(self, iterator, steps, stop_requested):
        # A stop request (SIGTERM) on any worker stops every worker: the flag is summed across
        # replicas, so all save the checkpoint at the same step (saving is collective).
        stop = self.strategy.reduce(SUM, self.strategy.run(lambda: tf.identity(stop_requested)), axis=None) > 0
        done = tf.constant(0, tf.int32)
        for _ in tf.range(steps):
            micro_batches = tuple(next(iterator) for _ in range(self.accumulate_steps))
            loss, correct, count, bad_grads = (
                self.strategy.reduce(SUM, r, axis=None)
                for r in self.strategy.run(self._replica_step, args=micro_batches)
            )
            if self.pruner is not None:
                self.pruner.after_step()
            done += 1
            if tf.math.is_finite(loss) and bad_grads == 0.0:
                self._nonfinite.assign(0)
                for key, value in zip(("loss", "correct", "count"), (loss, correct, count)):
                    self._sums[key].assign_add(value)
            else:
                self._nonfinite.assign_add(1)
                if self._nonfinite > self.max_nonfinite_steps:
                    break
        if self._moving_statistics:
            self._average_moving_statistics()
        return done, self._nonfinite.value(), stop

    def _average_moving_statistics(self):
        def replica_means():
            # read_value(): a tensor on the replica's device (MultiWorkerMirroredStrategy's
            # all-reduce needs one; converting the Keras variable gives a device-less read).
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MEAN, [v.value.read_value() for v in self._moving_statistics]
            )

        for variable, mean in zip(self._moving_statistics, self.strategy.run(replica_means)):
            variable.value.assign(mean)  # cross-replica: each replica's copy gets the (equal) mean

    def train_steps(self, iterator, steps: int, stop_requested: bool = False) -> tuple[int, int, bool]:
        """Runs up to `steps` optimizer steps in one compiled call. Returns (steps run, consecutive
        non-finite steps, whether any worker asked to stop); it returns early when the non-finite
        steps exceed max_nonfinite_steps."""
        done, nonfinite, stop = self._train_steps(
            iterator, tf.constant(steps, tf.int32), tf.constant(1.0 if stop_requested else 0.0)
        )
        return int(done), int(nonfinite), bool(stop)

    def diverged(self, nonfinite: int) -> bool:
        return nonfinite > self.max_nonfinite_steps

    @property
    def sums(self) -> dict:
        """The epoch's running sums (checkpointed: a run resumed mid-epoch reports the same epoch)."""
        return self._sums

    def reset_train_metrics(self) -> None:
        for v in self._sums.values():
            v.assign(0.0)

    def train_metrics(self) -> dict:
        sums = {k: float(v.numpy()) for k, v in self._sums.items()}
        count = max(sums["count"], 1.0)
        pruned = {"sparsity": self.pruner.sparsity()} if self.pruner is not None else {}
        return {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count, **pruned}

    # ---- evaluation -----------------------------------------------------------------------
    def _replica_eval(self, images, labels, weights):
        """Sums over the batch, and its confusion matrix; padding examples (weight 0) count for nothing."""
        logits = self.model(images, training=False)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        top1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
        topk = tf.cast(tf.math.in_top_k(labels, logits, self.top_k), tf.float32)
        predicted = tf.argmax(logits, -1, output_type=labels.dtype)
        confusion = tf.math.confusion_matrix(labels, predicted, self.num_classes, weights=weights, dtype=tf.float32)
        return (
            tf.reduce_sum(per_example * weights),
            tf.reduce_sum(top1 * weights),
            tf.reduce_sum(topk * weights),
            tf.reduce_sum(weights),
            confusion,
        )

    def _eval_all_fn(self, dataset):
        loss = top1 = topk = count = tf.constant(0.0)
        confusion = tf.zeros([self.num_classes, self.num_classes])
        for images, labels, weights in dataset:
            results = self.strategy.run(self._replica_eval, args=(images, labels, weights))
            b_loss, b_top1, b_topk, b_count, b_confusion = (self.strategy.reduce(SUM, r, axis=None) for r in results)
            loss, top1, topk, count = loss + b_loss, top1 + b_top1, topk + b_topk, count + b_count
            confusion += b_confusion
        return loss, top1, topk, count, confusion

    def evaluate(self, dist_dataset) -> dict:
        """Loss, top-1 and top-5 accuracy, balanced accuracy and macro-F1 over every example of the
        dataset, in one compiled call. Under multilabel: multilabel_eval.py's figures."""
        if self._multilabel_eval is not None:
            self.last_confusion = None  # (no confusion matrix of several labels per image)
            return self._multilabel_eval(dist_dataset)
        *sums, confusion = (t.numpy() for t in self._eval_all(dist_dataset))
        self.last_confusion = confusion  # rows: true class, columns: predicted
        loss, top1, topk, count = (float(s) for s in sums)
        count = max(count, 1.0)
        return {
            "loss": loss / count,
            "accuracy": top1 / count,
            f"top{self.top_k}": topk / count,
            "balanced_accuracy": class_metrics.balanced_accuracy(confusion),
            "macro_f1": class_metrics.macro_f1(confusion),
            "examples": int(count),
        }

    @property
    def has_ema(self) -> bool:
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return bool(getattr(inner, "use_ema", False))

    def evaluate_ema(self, dist_dataset) -> dict:
        """Evaluation with the moving-average weights, then the raw weights back in place."""
        variables = self.model.trainable_variables
        saved = [v.numpy() for v in variables]
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        inner.finalize_variable_values(variables)  # writes the averages into the model
        try:
            return self.evaluate(dist_dataset)
        finally:
            for v, value in zip(variables, saved):
                v.assign(value)

    def learning_rate(self) -> float:
        lr = self.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)
