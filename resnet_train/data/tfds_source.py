"""Datasets through tensorflow-datasets' own builders (CIFAR-10, CIFAR-100, ...).

Order of attempts, each answering in seconds:
1. `data_dir` already holds the prepared dataset -> load it.
2. The archive(s) the builder downloads lie in `manual_dir` -> tfds prepares from them
   (it verifies their checksums itself).
3. data.download=true (the default) and the download host answers -> tfds downloads and prepares
   as usual. With data.download=false nothing touches the network.
4. Otherwise fail at once, naming the folder looked in and the exact files that would make it work.
   (Left to itself, tfds retries an unreachable host for minutes before giving up.)
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import tensorflow as tf

from resnet_train.data.info import DatasetInfo, Splits, channel_stats
from resnet_train.errors import DataError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


def default_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the URL's host: answers within `timeout` where tfds would retry for minutes."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _builder(name: str, data_dir: Path):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"tensorflow-datasets has no dataset named {name!r}; see `tfds.list_builders()` for the names"
        ) from None


def prepare(name: str, data_dir=None, manual_dir=None, download: bool = True):
    """Make sure `name` is prepared in `data_dir`; returns its tfds builder. Fails fast offline."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    manual_dir = Path(manual_dir).expanduser() if manual_dir else data_dir / "downloads" / "manual"
    builder = _builder(name, data_dir)
    if builder.is_prepared():
        return builder

    archives = {url: info.filename or url.rsplit("/", 1)[-1] for url, info in (builder.url_infos or {}).items()}
    # ImageNet and friends need registration: tfds cannot download them, so never try.
    by_hand = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
    have_all = bool(archives) and all((manual_dir / f).is_file() for f in archives.values())
    reachable = not have_all and not by_hand and download and archives and all(host_reachable(url) for url in archives)
    if not (have_all or reachable):
        if by_hand:
            wanted = f"{', '.join(archives.values()) or 'its files'} (downloaded by hand from {builder.info.homepage})"
            why = "it cannot be downloaded automatically"
        else:
            wanted = ", ".join(f"{f} (from {url})" for url, f in archives.items()) or "its source files"
            why = "downloads are off (data.download=false)" if not download else "its download host is unreachable"
        # The third way out, where there is one: let tfds download it.
        or_download = (
            ", or set data.download=true to let tensorflow-datasets download it" if not download and not by_hand else ""
        )
        raise DataError(
            f"{name} is not prepared in {data_dir} and {why}: put {wanted} into {manual_dir} "
            f"(or set data.manual_dir to the folder that holds it), or point data.data_dir at a "
            f"prepared tensorflow-datasets folder{or_download}"
        )
    source = f"the archive in {manual_dir}" if have_all else "a download"
    log.info("Preparing %s in %s from %s (once; later runs load it directly)", name, data_dir, source)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    except NonMatchingChecksumError:
        raise DataError(
            f"{', '.join(archives.values())} in {manual_dir} does not have the expected checksum "
            f"(truncated or a different file): download it again from {', '.join(archives)}"
        ) from None
    return builder


def _as_arrays(builder, split: str):
    import tensorflow_datasets as tfds

    images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def load(
    name: str,
    data_dir=None,
    manual_dir=None,
    download=True,
    mean=None,
    std=None,
    train_split="train",
    test_split="test",
    in_memory=True,
    image_size=224,
) -> Splits:
    """In memory: decoded uint8 arrays (CIFAR-sized data: ~150 MB for 50k images). Otherwise
    (ImageNet) a stream of encoded images that the pipeline decodes and crops to `image_size`."""
    builder = prepare(name, data_dir, manual_dir, download)
    if not in_memory:
        return _streamed(builder, name, mean, std, train_split, test_split, image_size)
    x_train, y_train = _as_arrays(builder, train_split)
    x_test, y_test = _as_arrays(builder, test_split)
    if mean is None or std is None:
        mean, std = channel_stats(x_train)
    label = builder.info.features[builder.info.supervised_keys[1]]
    info = DatasetInfo(
        name=name,
        num_classes=int(label.num_classes),
        image_shape=tuple(int(s) for s in x_train.shape[1:]),
        train_size=len(x_train),
        test_size=len(x_test),
        class_names=list(label.names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    return Splits(
        tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        tf.data.Dataset.from_tensor_slices((x_test, y_test)),
        info,
    )


def _streamed(builder, name, mean, std, train_split, test_split, image_size) -> Splits:
    import tensorflow_datasets as tfds

    def read(split, file_seed=None, shard=(1, 0)):
        if split not in builder.info.splits:
            raise DataError(
                f"{name} in {builder.data_dir} has no {split!r} split (it has {', '.join(builder.info.splits)})"
            )
        # With a file_seed, the files are read in an order of that seed (tfds shuffles its file list
        # with it; a seeded shuffle keeps the interleave deterministic, so exact resumes hold).
        # With a shard (count, index) of data.shard=files, tfds gives this input pipeline its files.
        context = tf.distribute.InputContext(shard[0], shard[1]) if shard[0] > 1 else None
        config = tfds.ReadConfig(shuffle_seed=file_seed, shuffle_reshuffle_each_iteration=False, input_context=context)
        # Encoded bytes: decoding happens in the pipeline, fused with the crop (decode_and_crop_jpeg).
        ds = builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=file_seed is not None,
            read_config=config,
            decoders={builder.info.supervised_keys[0]: tfds.decode.SkipDecoding()},
        )
        return ds, builder.info.splits[split].num_examples

    def train_for_epoch(seed: int, epoch: int, shard=(1, 0)):
        # The pipeline's shuffle buffer (10k of ImageNet's 1.28M) only mixes nearby examples: without
        # a new file order each epoch, every epoch would see nearly the same sequence.
        return read(train_split, file_seed=int(seed) * 100_003 + int(epoch), shard=shard)[0]

    (train, train_size), (test, test_size) = read(train_split), read(test_split)
    if mean is None or std is None:
        log.warning("No data.mean / data.std for %s: using 127.5 / 64 (set them for better training)", name)
        mean, std = (127.5,) * 3, (64.0,) * 3
    label = builder.info.features[builder.info.supervised_keys[1]]
    info = DatasetInfo(
        name=name,
        num_classes=int(label.num_classes),
        image_shape=(image_size, image_size, 3),
        train_size=train_size,
        test_size=test_size,
        class_names=list(label.names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        encoded=True,
    )
    return Splits(train, test, info, train_for_epoch=train_for_epoch)
