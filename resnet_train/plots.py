"""Pictures for people: the augmentation gallery (more plots join here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from resnet_train.data.augment import example_seed


def augment_gallery(images, labels, class_names, augment, batch_augment, versions: int, seed: int, path) -> Path:
    """A grid: one row per image, the original first, then `versions` augmented draws (epochs 0..).

    Soft labels (mixup / cutmix) are shown as the top two classes with their weights.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = tf.convert_to_tensor(images)
    rows = [[(images[i].numpy(), class_names[int(labels[i])]) for i in range(len(labels))]]
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
