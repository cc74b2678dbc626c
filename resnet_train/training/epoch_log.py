"""The line train.log gets at the end of every epoch: the training figures, then the evaluation
split's, single-label (accuracy, balanced accuracy, macro-F1) or multi-label (mAP, macro-F1 at
data.threshold, exact match, and each class's F1 up to PER_CLASS_SHOWN classes), then the learning
rate and speed."""

from __future__ import annotations

import logging

log = logging.getLogger("resnet_train.training.loop")  # the loop's lines, under the loop's name


PER_CLASS_SHOWN = 10  # multi-label classes whose F1 the line gives; more: metrics.jsonl and TensorBoard


def evaluation_figures(split: str, evaluation: dict) -> str:
    if "map" in evaluation:
        f1 = evaluation.get("per_class_f1") or {}
        per_class = (
            "  F1 " + " ".join(f"{name} {'-' if v is None else f'{v:.2f}'}" for name, v in f1.items())
            if 0 < len(f1) <= PER_CLASS_SHOWN
            else ""
        )
        return (
            f"{split} loss {evaluation['loss']:.4f}  mAP {evaluation['map']:.4f}  "
            f"macro-F1 {evaluation['macro_f1']:.4f}  exact {evaluation['accuracy']:.4f}{per_class}"
        )
    return (
        f"{split} loss {evaluation['loss']:.4f}  acc {evaluation['accuracy']:.4f}  "
        f"bal.acc {evaluation['balanced_accuracy']:.4f}  macro-F1 {evaluation['macro_f1']:.4f}"
    )


def log_epoch(run, epoch: int, train: dict, evaluation: dict) -> None:
    log.info("epoch %d/%d  loss %.4f  acc %.4f | %s | lr %.4g  %.0f img/s  MFU %.1f%%", epoch + 1, run.epochs,
             train["loss"], train["accuracy"], evaluation_figures(run.eval_split, evaluation), train["lr"],
             train["images_per_sec"], 100 * train["mfu"])  # fmt: skip
