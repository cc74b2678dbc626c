"""data.task=multilabel, the data side: a folder listed by a labels file (CSV or JSON) and TFRecords
with several labels per record give float32 multi-hot labels; made here by the tests.

`make_multilabel_folder(root, n, size, seed)` is the multi-label folder other tests train on
(`from test_multilabel_data import make_multilabel_folder`).
"""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from resnet_train.data import multilabel_folder
from resnet_train.errors import ConfigError, DataError

# Each label a colour in a quadrant of its own: present = that quadrant painted, absent = dark grey.
# Sorted, so the label matrix's columns are the loader's classes in order.
CLASSES = ("blue", "green", "red", "yellow")
COLOURS = {"blue": (30, 60, 230), "green": (30, 210, 40), "red": (230, 30, 30), "yellow": (235, 225, 30)}
QUADRANTS = {"blue": (0, 0), "green": (0, 1), "red": (1, 0), "yellow": (1, 1)}  # (row, column)


def make_multilabel_folder(root, n=48, size=32, seed=0, fmt="csv"):
    """Writes n size x size PNGs under `root` (in two sub-folders: images anywhere under it) and
    their labels file (labels.csv, or labels.json with fmt="json"); returns the (n, 4) float32 label
    matrix, rows in the file's order, columns CLASSES. Each label is present with odds 1/2, every
    label in at least one image and absent from another; a label's cue (a strong colour in its own
    quadrant) is learnt by a tiny CNN in a few epochs."""
    from pathlib import Path

    root = Path(root)
    rng = np.random.default_rng(seed)
    labels = _label_matrix(rng, n)
    entries = {}
    for i, row in enumerate(labels):
        rel = f"{'odd' if i % 2 else 'even'}/img{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_scene(row, size, rng)).save(root / rel)
        entries[rel] = [name for name, present in zip(CLASSES, row) if present]
    if fmt == "json":
        (root / "labels.json").write_text(json.dumps(entries, indent=1))
    else:
        lines = ["file,labels", *(f"{rel},{' '.join(names)}" for rel, names in entries.items())]
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return labels


def _label_matrix(rng, n):
    labels = (rng.random((n, len(CLASSES))) < 0.5).astype(np.float32)
    labels[0], labels[1] = 1.0, 0.0  # every label present somewhere and absent somewhere
    return labels


def _scene(row, size, rng) -> np.ndarray:
    """A uint8 picture of one label vector: each present label's colour in its quadrant."""
    half = size // 2
    pixels = np.full((size, size, 3), 50.0) + rng.normal(0, 8, (size, size, 3))
    for name, present in zip(CLASSES, row):
        if present:
            r, c = QUADRANTS[name]
            pixels[r * half : (r + 1) * half, c * half : (c + 1) * half] = COLOURS[name]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _labels(ds) -> np.ndarray:
    return np.stack([y.numpy() for _, y in ds])


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "scenes"
    return root, make_multilabel_folder(root)


def test_labels_are_multi_hot_float32_with_the_sorted_classes(tree, caplog):
    root, matrix = tree
    with caplog.at_level(logging.INFO):
        splits = multilabel_folder.load(root, image_size=16, val_fraction=0.25, split_seed=3)
    info = splits.info
    assert info.task == "multilabel" and info.class_names == list(CLASSES) and info.num_classes == 4
    assert (info.train_size, info.test_size) == (36, 12)
    assert splits.train.element_spec[1] == tf.TensorSpec([4], tf.float32)
    train_idx, held_idx = multilabel_folder.uniform_split(48, 0.25, 3)
    np.testing.assert_array_equal(_labels(splits.train), matrix[train_idx])
    np.testing.assert_array_equal(_labels(splits.test), matrix[held_idx])
    for image, label in splits.train:  # the pixels carry the labels: a painted quadrant per label
        for k, name in enumerate(CLASSES):
            r, c = QUADRANTS[name]
            quadrant = image.numpy()[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8].reshape(-1, 3).mean(0)
            assert (np.abs(quadrant - COLOURS[name]).max() < 40) == bool(label[k])
    again = multilabel_folder.load(root, image_size=16, val_fraction=0.25, split_seed=3)
    np.testing.assert_array_equal(_labels(again.test), _labels(splits.test))  # the split is fixed
    other = multilabel_folder.load(root, image_size=16, val_fraction=0.25, split_seed=4)
    assert not np.array_equal(_labels(other.test), _labels(splits.test))
    assert "Folder" in caplog.text and "4 classes, 36 train / 12 held-out" in caplog.text


def test_a_json_labels_file_gives_what_the_csv_gives(tmp_path):
    a = make_multilabel_folder(tmp_path / "csv", n=16, size=16)
    b = make_multilabel_folder(tmp_path / "json", n=16, size=16, fmt="json")
    np.testing.assert_array_equal(a, b)
    from_csv = multilabel_folder.load(tmp_path / "csv", image_size=16)
    from_json = multilabel_folder.load(tmp_path / "json", image_size=16)
    np.testing.assert_array_equal(_labels(from_json.train), _labels(from_csv.train))
    assert from_json.info.class_names == from_csv.info.class_names == list(CLASSES)


def test_an_image_without_labels_is_all_zeros_and_unlisted_images_are_left_out(tmp_path, caplog):
    root = tmp_path / "d"
    make_multilabel_folder(root, n=12, size=16)
    Image.new("RGB", (16, 16)).save(root / "stray.png")  # under the folder, not listed
    with caplog.at_level(logging.INFO):
        splits = multilabel_folder.load(root, image_size=16, val_fraction=0.25)
    assert splits.info.train_size + splits.info.test_size == 12
    assert "1 image(s) under" in caplog.text and "not used" in caplog.text
    both = np.concatenate([_labels(splits.train), _labels(splits.test)])
    assert (both.sum(1) == 0).sum() >= 1  # img001 has no label (make_multilabel_folder's row 1)


def _batches(splits, seed=3):
    from helpers import compose

    from resnet_train.data import pipeline
    from resnet_train.data.augment import make_augment, make_batch_augment

    info = splits.info
    cfg = compose("data=folder", "augment.mixup_alpha=0.4")
    augment = make_augment(cfg.augment, info.image_shape, info.mean)
    mix = make_batch_augment(cfg.augment, info.num_classes)
    load = pipeline.file_loader(info)
    ds = pipeline.train_batches(splits.train, info.train_size, 8, seed, 1, augment, mix, load=load)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_in_memory_and_streamed_give_the_same_batches(tree):
    root, _ = tree
    memory = multilabel_folder.load(root, image_size=16, cache=True)
    streamed = multilabel_folder.load(root, image_size=16, cache=False)
    assert not memory.info.files and streamed.info.files and streamed.info.task == "multilabel"
    for key in ("train_size", "test_size", "class_names", "mean", "std"):
        assert getattr(streamed.info, key) == getattr(memory.info, key), key
    a, b = _batches(memory), _batches(streamed)
    assert len(a) == len(b) == 38 // 8
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert ya.shape == (8, 4) and ya.min() >= 0 and ya.max() <= 1  # mixed multi-hot vectors


def test_repeated_augmentation_and_sharded_pipelines_carry_multi_hot_labels(tree):
    from resnet_train.data import pipeline

    root, matrix = tree
    splits = multilabel_folder.load(root, image_size=16, cache=False)  # streamed: file paths + labels
    info, load = splits.info, pipeline.file_loader(splits.info)
    rows = {tuple(r) for r in matrix}
    twice = pipeline.training_stream(splits.train, info.train_size, 8, 3, 0, 1, load=load, repeats=2)
    for _, labels in twice:
        assert np.array_equal(labels[0::2], labels[1::2]) and {tuple(r) for r in labels.numpy()} <= rows
    halves = [
        pipeline.training_stream(splits.train_shard(3, 0, 2, i), info.train_size, 8, 3, 0, 1, load=load, pipelines=2,
                                 pipeline_id=i, sharded=True)
        for i in range(2)
    ]  # fmt: skip
    for a, b in zip(*halves):
        assert a[1].shape == b[1].shape == (4, 4) and a[1].dtype == tf.float32


def test_train_and_val_trees_each_with_its_labels_file(tmp_path):
    train = make_multilabel_folder(tmp_path / "train", n=20, size=16)
    val = make_multilabel_folder(tmp_path / "val", n=10, size=16, seed=1, fmt="json")
    splits = multilabel_folder.load(tmp_path, image_size=16)
    assert (splits.info.train_size, splits.info.test_size) == (20, 10)
    np.testing.assert_array_equal(_labels(splits.train), train)
    np.testing.assert_array_equal(_labels(splits.test), val)


def _write(root, text, name="labels.csv"):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 200, 0, 0)).save(root / f"{i}.png")
    (root / name).write_text(text)


@pytest.mark.parametrize(
    "files,message",
    [
        ({}, r"no labels file in .*: data.task=multilabel looks for labels.csv or labels.json \(a CSV with the header"),
        ({"labels.csv": "file,labels\n0.png,a\n9.png,b\n"}, r"labels.csv line 3: 9.png does not exist"),
        ({"labels.csv": "file,labels\n0.png,a\n1.png,b,c\n"}, r"labels.csv line 3: expected a file and its labels"),
        ({"labels.csv": "path,tags\n0.png,a\n"}, r"labels.csv line 1: the header must be file,labels"),
        ({"labels.csv": "file,labels\n0.png,a\n0.png,b\n"}, r"line 3: 0.png is listed twice \(first on line 2\)"),
        ({"labels.csv": "file,labels\n0.png,a\n1.png,a\n"}, r"labels.csv names 1 label\(s\) \(a\): .* at least two"),
        ({"labels.csv": "file,labels\n"}, r"labels.csv lists no image"),
        ({"labels.json": '{"0.png": ["a"],\n "1.png": ["b"\n}'}, r"labels.json line 3: not valid JSON"),
        ({"labels.json": '{"0.png": ["a"], "1.png": "b"}'}, r"labels.json entry '1.png': the labels must be a list"),
        ({"labels.json": '[["0.png", "a"]]'}, r"labels.json: expected a JSON object of file -> list of labels"),
        (
            {"train/labels.csv": "file,labels\n0.png,a\n1.png,b\n", "val/labels.csv": "file,labels\n0.png,a zebra\n"},
            r"val/labels.csv names label\(s\) the training split's labels file does not have \(zebra\)",
        ),
    ],
    ids=[
        "none",
        "missing",
        "fields",
        "header",
        "twice",
        "one-class",
        "empty",
        "json",
        "json-entry",
        "json-list",
        "unknown-held-out-label",
    ],  # fmt: skip
)
def test_bad_labels_files_fail_with_one_clear_line(tmp_path, files, message):
    root = tmp_path / "d"
    _write(root, "", name="unused.txt")
    for name, text in files.items():
        _write((root / name).parent, text, name=(root / name).name)
    with pytest.raises(DataError, match=message):
        multilabel_folder.load(root, image_size=8)


def test_a_named_labels_file_is_looked_for_in_each_split(tmp_path):
    root = tmp_path / "d"
    _write(root, "file,labels\n0.png,a\n1.png,b\n", name="tags.csv")
    splits = multilabel_folder.load(root, image_size=8, val_fraction=0.5, labels_file="tags.csv")
    assert splits.info.class_names == ["a", "b"]
    with pytest.raises(DataError, match=r"data.labels_file=other.csv: no such file in"):
        multilabel_folder.load(root, image_size=8, labels_file="other.csv")


def _compose_folder(root, *more):
    from helpers import compose

    return compose("data=folder", f"data.path={root}", "data.task=multilabel", "data.image_size=16", *more)


def test_data_load_carves_validation_uniformly_and_counts_positives(tree, caplog):
    from resnet_train import data

    root, matrix = tree
    with caplog.at_level(logging.INFO):
        splits = data.load(_compose_folder(root, "data.val_split=0.25").data)
    info = splits.info
    assert (info.train_size, info.val_size, info.test_size) == (28, 10, 10)
    assert "drawn uniformly (multi-label: stratifying needs one label)" in caplog.text
    train = _labels(splits.train)
    assert data.class_counts(splits) == [int(c) for c in train.sum(0)]
    assert sum(data.class_counts(splits)) > info.train_size  # several labels per image
    assert _labels(splits.val).shape == (10, 4)


def test_eval_padding_matches_multi_hot_labels(tree):
    from resnet_train.data import pipeline

    root, _ = tree
    splits = multilabel_folder.load(root, image_size=16)
    batches = list(pipeline.eval_batches(splits.test, 4, size=10, image_shape=(16, 16, 3)))
    assert len(batches) == 3
    images, labels, weights = batches[-1]
    assert labels.dtype == tf.float32 and labels.shape == (4, 4)
    np.testing.assert_array_equal(labels.numpy()[2:], 0.0)
    np.testing.assert_array_equal(weights.numpy(), [1, 1, 0, 0])
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches])[:10], _labels(splits.test))


@pytest.mark.parametrize("mix", ["augment.mixup_alpha=0.4", "augment.cutmix_alpha=1.0"])
def test_mixup_and_cutmix_mix_multi_hot_labels_as_they_are(mix):
    from helpers import compose

    from resnet_train.data.augment import make_batch_augment

    batch_augment = make_batch_augment(compose(mix).augment, 4)
    images = tf.random.stateless_uniform([8, 16, 16, 3], [1, 2], maxval=256, dtype=tf.int32)
    images = tf.cast(images, tf.uint8)
    classes = tf.constant([0, 1, 2, 3, 0, 1, 2, 3], tf.int64)
    seed = tf.constant([5, 6], tf.int64)
    # One label each as multi-hot: exactly what the class indices give.
    _, from_index = batch_augment(images, classes, seed)
    _, from_hot = batch_augment(images, tf.one_hot(classes, 4), seed)
    np.testing.assert_allclose(from_hot.numpy(), from_index.numpy())
    two = tf.constant([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]] * 2, tf.float32)
    _, mixed = batch_augment(images, two, seed)
    assert mixed.shape == (8, 4)
    np.testing.assert_allclose(mixed.numpy().sum(1), 2.0, rtol=1e-6)  # convex mixes of two-label vectors
    assert not np.array_equal(mixed.numpy(), two.numpy())


def test_a_single_label_source_under_multilabel_is_refused_by_data_load():
    from helpers import compose

    from resnet_train import data

    cfg = compose("data=synthetic")
    cfg.data.task = "multilabel"
    with pytest.raises(ConfigError, match="data.task=multilabel: data=synthetic has one label per image"):
        data.load(cfg.data)


# --- TFRecords with several image/class/label values per record --------------------------------
def write_multilabel_records(path, n=24, seed=0, offset=0, shards=2):
    """n JPEG records of make_multilabel_folder's scenes, labels (+ offset) and their texts, in
    `shards` files path-0000i-of-0000n; row 0's first label is written twice (counted once).
    Returns the label matrix, rows in record order (round-robin over the shards)."""
    rng = np.random.default_rng(seed)
    labels = _label_matrix(rng, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(f"{path}-{i:05d}-of-{shards:05d}") for i in range(shards)]
    for i, row in enumerate(labels):
        values = [int(k) for k in np.flatnonzero(row)] + ([int(np.flatnonzero(row)[0])] if i == 0 else [])
        feature = {
            "image/encoded": _bytes(tf.io.encode_jpeg(_scene(row, 32, rng), quality=95).numpy()),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[v + offset for v in values])),
            "image/class/text": _bytes(*(CLASSES[v].encode() for v in values)),
        }
        writers[i % shards].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    for writer in writers:
        writer.close()
    return labels


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


@pytest.fixture
def records(tmp_path):
    train = write_multilabel_records(tmp_path / "rec" / "train", 24, offset=1)
    held = write_multilabel_records(tmp_path / "rec" / "validation", 10, seed=1, offset=1)
    return tmp_path / "rec", train, held


def _load_records(root, *more):
    from helpers import compose

    from resnet_train import data

    args = [f"data.train_files={root}/train-*", f"data.eval_files={root}/validation-*", "data.image_size=16"]
    return data.load(compose("data=tfrecord", "data.task=multilabel", *args, *more).data)


def _in_record_order(matrix, shards=2):
    return np.concatenate([matrix[i::shards] for i in range(shards)])  # file by file


def test_records_with_several_labels_give_multi_hot_vectors(records):
    from resnet_train import data
    from resnet_train.data import pipeline

    root, train, held = records
    splits = _load_records(root, "data.label_offset=1")
    info = splits.info
    assert info.task == "multilabel" and info.encoded and info.class_names == list(CLASSES)
    assert (info.num_classes, info.train_size, info.test_size) == (4, 24, 10)
    assert data.class_counts(splits) == [int(c) for c in train.sum(0)]  # row 0's repeated label once
    assert splits.train.element_spec[1] == tf.TensorSpec([4], tf.float32)
    np.testing.assert_array_equal(_labels(splits.train), _in_record_order(train))
    epoch = _labels(splits.train_for_epoch(7, 0))
    assert sorted(map(tuple, epoch)) == sorted(map(tuple, train))
    batches = list(pipeline.eval_batches(splits.test, 4, pipeline.eval_preprocess(info), 10, info.image_shape))
    labels = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(labels[:10], _in_record_order(held))
    np.testing.assert_array_equal(labels[10:], 0.0)
    image = batches[0][0].numpy()[0]  # the first record's scene (all four labels) survives the JPEG
    assert np.abs(image[:8, :8].reshape(-1, 3).mean(0) - COLOURS["blue"]).max() < 40


@pytest.mark.parametrize(
    "more,message",
    [
        (["data.label_offset=1", "data.num_classes=3"], r"is 4, out of range for 3 classes after data.label_offset=1"),
        (["data.label_offset=2"], r"start at 1, below data.label_offset=2: set data.label_offset=1"),
    ],
    ids=["out-of-range", "offset"],
)
def test_bad_multilabel_records_fail_with_one_clear_line(records, more, message):
    with pytest.raises(DataError, match=message):
        _load_records(records[0], *more)


def test_a_labels_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a BOM, which would otherwise spoil the header."""
    labels = make_multilabel_folder(tmp_path, n=12)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes())
    splits = multilabel_folder.load(tmp_path, val_fraction=0.25)
    assert splits.info.class_names == list(CLASSES)
    assert splits.info.train_size + splits.info.test_size == len(labels)
