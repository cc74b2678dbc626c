"""Pictures for people, each a PNG written atomically: the augmentation gallery, a run's training
curves (redrawn as epochs end, CurvesEvery), the learning-rate schedule, runs compared, the confusion
matrix and Grad-CAM heat maps (resnet-evaluate / resnet-explain)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from resnet_train.data.augment import example_seed


def augment_gallery(
    images, labels, class_names, augment, batch_augment, versions: int, seed: int, path, originals=None
) -> Path:
    """A grid: one row per image, the original first, then `versions` augmented draws (epochs 0..).

    Soft labels (mixup / cutmix) are shown as the top two classes with their weights. `images`
    are what `augment` takes (encoded bytes for streamed data, with `originals` decoded to show).
    """
    plt = _pyplot()
    images = tf.convert_to_tensor(images)
    shown = images if originals is None else tf.convert_to_tensor(originals)
    rows = [[(shown[i].numpy(), class_names[int(labels[i])]) for i in range(len(labels))]]
    for epoch in range(versions):
        batch = images
        if augment is not None:
            batch = tf.stack([augment(images[i], example_seed(seed, epoch, i)) for i in range(len(labels))])
        titles = [class_names[int(y)] for y in labels]
        if batch_augment is not None:
            batch, soft = batch_augment(batch, tf.constant(labels, tf.int64), example_seed(seed, epoch, 0, stream=1))
            titles = []
            for weights in soft.numpy():
                top = np.argsort(weights)[::-1][:2]
                titles.append(" + ".join(f"{class_names[k]} {weights[k]:.2f}" for k in top if weights[k] > 0.005))
        rows.append(list(zip(batch.numpy(), titles)))

    n, cols = len(labels), versions + 1
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    for c, column in enumerate(rows):
        for r, (image, title) in enumerate(column):
            ax = axes[r][c]
            ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
            ax.set_title(("original: " if c == 0 else "") + title, fontsize=6)
            ax.axis("off")
    return _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(metrics_path, out_path) -> Path:
    """curves.png: loss and accuracy (train and eval) against epochs, the lr on a second axis."""
    from resnet_train.report.metrics import read_metrics

    records = read_metrics(Path(metrics_path).parent)
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("eval", "--")):
        points = _last_per_epoch(records, split)
        epochs = [r["epoch"] for r in points]
        ax_loss.plot(epochs, [r["loss"] for r in points], style, marker=".", label=f"{split} loss")
        ax_acc.plot(epochs, [r["accuracy"] for r in points], style, marker=".", label=f"{split} accuracy")
        if any("map" in r for r in points):  # data.task=multilabel: accuracy is exact match; mAP beside it
            ax_acc.plot(epochs, [r.get("map", float("nan")) for r in points], "-.", marker=".", label=f"{split} mAP")
    train = _last_per_epoch(records, "train")
    lr_axis = ax_loss.twinx()
    lr_axis.plot([r["epoch"] for r in train], [r.get("lr", float("nan")) for r in train], ":", color="grey", label="lr")
    lr_axis.set_ylabel("learning rate")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax_loss.legend(loc="upper center")
    ax_acc.legend(loc="lower right")
    return _save(fig, out_path)


class CurvesEvery:
    """Redraws a run's training curves at most every `seconds`, and always when asked to for the
    run's last epoch or a stop. A picture costs 0.3-0.7 s of CPU (2 cores of an AMD EPYC Zen 3):
    drawn after each of a short run's epochs it was 40% of the run's time, while an epoch of a
    real run takes far longer than `seconds`, so such a run still gets a picture every epoch."""

    def __init__(self, metrics_path, out_path, seconds: float = 30.0):
        self.metrics_path, self.out_path, self.seconds = metrics_path, out_path, seconds
        self.drawn_at = time.monotonic()  # the run's start: a short run is drawn once, at its end

    def epoch_ended(self, last: bool) -> bool:
        """Draws if `last` or if the last picture is `seconds` old; says whether it drew."""
        if not last and time.monotonic() - self.drawn_at < self.seconds:
            return False
        training_curves(self.metrics_path, self.out_path)
        self.drawn_at = time.monotonic()
        return True


def lr_curve(lrs, steps_per_epoch: int, out_path, title: str = "") -> Path:
    """The learning rate at every optimizer step, against epochs (what a schedule will do)."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(np.arange(len(lrs)) / max(1, steps_per_epoch), lrs)
    ax.set(xlabel="epoch", ylabel="learning rate", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return _save(fig, out_path)


def _last_per_epoch(records, split):
    """One point per epoch: a resumed run may have logged an epoch twice; the later one wins."""
    by_epoch = {r["epoch"]: r for r in records if r.get("split") == split}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _save(fig, out_path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = out_path.with_name(out_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(out_path)  # never a half-written picture
    _pyplot().close(fig)
    return out_path


def compare_runs(run_dirs, out_path, names=None) -> Path:
    """Overlays several runs (a sweep): eval accuracy (mAP for multi-label runs) and train loss against epochs."""
    from resnet_train.report.metrics import read_metrics

    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [_last_per_epoch(read_metrics(run), split) for run in run_dirs for split in ("train", "eval")]
    # Multi-label runs (their records have a map): mAP, their accuracy being exact match.
    key = "map" if all("map" in r for evals in runs[1::2] for r in evals) and any(runs[1::2]) else "accuracy"
    for i, (run, train, evals) in enumerate(zip(run_dirs, runs[::2], runs[1::2])):
        label = names[i] if names else Path(run).name
        ax_loss.plot([r["epoch"] for r in train], [r["loss"] for r in train], marker=".", label=label)
        ax_acc.plot([r["epoch"] for r in evals], [r[key] for r in evals], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss")
    what = "eval mAP" if key == "map" else "eval accuracy"
    ax_acc.set(xlabel="epoch", ylabel=what, title=what, ylim=(0, 1))
    ax_acc.legend(fontsize=7)
    return _save(fig, out_path)


def confusion_matrix(matrix, class_names, out_path, title="") -> Path:
    """Rows: true class, columns: predicted class; cells: counts, coloured by row share."""
    plt = _pyplot()
    n = len(class_names)
    size = max(4.0, min(0.45 * n + 2, 24.0))
    fig, ax = plt.subplots(figsize=(size, size))
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        int(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if shares[i, j] > 0.5 else "black",
                    )
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, out_path)


def grad_cam_figure(image, heat, title, out_path) -> Path:
    """The image and the Grad-CAM heatmap laid over it, side by side."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6, 3.2))
    left.imshow(image)
    left.set_title("input", fontsize=8)
    right.imshow(image)
    right.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    right.set_title(title, fontsize=8)
    for ax in (left, right):
        ax.axis("off")
    return _save(fig, out_path)
