"""Image files decoded in threads by `preprocess.preprocess_file`: kept (the folder source in
memory) or only checked and measured (the folder source streamed from disk, bounded memory).

Both give each file's per-channel pixel sums, so the channel statistics of any subset (the
training images after the held-out split) are the same numbers whichever way the folder is read.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from resnet_train.data.info import displayable
from resnet_train.data.preprocess import preprocess_file

log = logging.getLogger(__name__)

MAX_NAMED = 10  # unreadable files named one by one; the rest only counted


@dataclass
class Decoded:
    ok: np.ndarray  # bool per file: readable
    sums: np.ndarray  # (files, channels) float64: per-channel sum of the file's pixels
    squares: np.ndarray  # (files, channels): per-channel sum of the squared pixels
    pixels: int  # pixels per image
    images: np.ndarray | None = None  # (readable files, H, W, C) uint8 when kept


def decode_files(paths, image_shape, what: str, keep: bool = True) -> Decoded:
    """Each file as `preprocess.preprocess` makes it (what prediction and the exported model see).
    In threads (TF's kernels release the GIL); unreadable files are named in one warning."""
    from tqdm.auto import tqdm

    shape = tuple(int(s) for s in image_shape)
    channels = shape[-1]

    def one(path):
        image = preprocess_file(path, shape)
        if image is None:
            return None, None
        values = image.reshape(-1, channels).astype(np.float64)
        return (image if keep else None), (values.sum(0), np.square(values).sum(0))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(
            tqdm(
                pool.map(one, paths),
                total=len(paths),
                desc=f"{'decoding' if keep else 'checking'} {what}",
                unit="img",
                leave=False,
                disable=len(paths) < 2000 or None,
            )
        )
    ok = np.array([stats is not None for _, stats in results], bool)
    zero = np.zeros(channels)
    sums = np.array([s[0] if s else zero for _, s in results]).reshape(len(paths), channels)
    squares = np.array([s[1] if s else zero for _, s in results]).reshape(len(paths), channels)
    bad = [p for p, good in zip(paths, ok) if not good]
    if bad:
        named = ", ".join(displayable(str(p)) for p in bad[:MAX_NAMED])
        more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        log.warning("Skipped %d unreadable image file(s) in %s: %s%s", len(bad), what, named, more)
    images = None
    if keep:
        kept = [image for image, stats in results if stats is not None]
        images = np.stack(kept) if kept else np.zeros((0, *shape), np.uint8)
    return Decoded(ok=ok, sums=sums, squares=squares, pixels=shape[0] * shape[1], images=images)


def channel_stats_of_sums(sums, squares, pixels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..255 scale) of the images whose rows of sums/squares are given."""
    count = float(len(sums) * pixels)
    mean = sums.sum(0) / count
    std = np.sqrt(np.maximum(squares.sum(0) / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
