"""data=folder: the user's own images in class folders, made here by the tests."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from resnet_train.data import folder
from resnet_train.errors import DataError


def write_images(directory, n, color, fmt="png", size=(20, 14), seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = np.clip(np.array(color) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(directory / f"img{i}.{fmt}")


@pytest.fixture
def photo_tree(tmp_path):
    """Three classes in four formats and several sizes, plus two broken files."""
    root = tmp_path / "photos"
    write_images(root / "cat", 6, (200, 40, 40), "jpg", size=(40, 30))
    write_images(root / "dog", 6, (40, 200, 40), "png", size=(16, 16))
    write_images(root / "fox", 3, (40, 40, 200), "bmp", size=(33, 47))
    write_images(root / "fox", 3, (40, 40, 210), "gif", size=(12, 12), seed=1)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (root / "dog" / "img0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notes.txt").write_text("not a class folder")
    return root


def test_single_tree_is_split_per_class_and_broken_files_are_skipped(photo_tree, caplog):
    with caplog.at_level(logging.WARNING):
        splits = folder.load(photo_tree, image_size=16, val_fraction=0.34)
    info = splits.info
    assert info.class_names == ["cat", "dog", "fox"]
    assert info.skipped_files == 2
    assert "broken.jpg" in caplog.text and "truncated.png" in caplog.text
    assert info.train_size + info.test_size == 18
    _, test_labels = zip(*splits.test.as_numpy_iterator())
    assert sorted(set(test_labels)) == [0, 1, 2]  # every class held out, stratified
    images, _ = next(iter(splits.train.batch(100)))
    assert images.shape[1:] == (16, 16, 3) and images.dtype == "uint8"
    again = folder.load(photo_tree, image_size=16, val_fraction=0.34)  # the split is fixed
    a = [x.tobytes() for x, _ in splits.test.as_numpy_iterator()]
    assert a == [x.tobytes() for x, _ in again.test.as_numpy_iterator()]


def test_pixels_follow_the_class_colour(photo_tree):
    splits = folder.load(photo_tree, image_size=8)
    for image, label in splits.train.as_numpy_iterator():
        assert int(np.argmax(image.reshape(-1, 3).mean(0))) == label  # red cat, green dog, blue fox


def test_train_and_val_trees(tmp_path):
    write_images(tmp_path / "train" / "a", 4, (255, 0, 0))
    write_images(tmp_path / "train" / "b", 4, (0, 255, 0))
    write_images(tmp_path / "val" / "b", 2, (0, 255, 0))
    write_images(tmp_path / "val" / "a", 3, (255, 0, 0))
    splits = folder.load(tmp_path, image_size=8)
    assert (splits.info.train_size, splits.info.test_size) == (8, 5)
    labels = sorted(int(y) for _, y in splits.test.as_numpy_iterator())
    assert labels == [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no images in"),
        (lambda root: write_images(root / "only", 3, (1, 2, 3)), "one class"),
        (
            lambda root: (
                write_images(root / "train" / "a", 2, (1, 2, 3)),
                write_images(root / "train" / "b", 2, (1, 2, 3)),
                write_images(root / "val" / "zebra", 2, (1, 2, 3)),
            ),
            "not among the training classes",
        ),
    ],
    ids=["missing", "empty", "single-class", "unknown-val-class"],
)
def test_bad_folders_fail_with_one_clear_line(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=message):
        folder.load(root, image_size=8)


def test_folder_end_to_end_through_the_cli(cli, photo_tree, tmp_path):
    run = tmp_path / "run"
    done = cli(
        "data=folder",
        f"data.path={photo_tree}",
        "depth=8",
        "epochs=2",
        "batch_size=4",
        "data.image_size=16",
        f"hydra.run.dir={run}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((run / "dataset.json").read_text())
    assert info["class_names"] == ["cat", "dog", "fox"] and info["image_shape"] == [16, 16, 3]
    assert "2 unreadable skipped" in (run / "train.log").read_text()
    missing = cli("data=folder", f"hydra.run.dir={tmp_path / 'run2'}")
    assert missing.returncode == 2 and "data=folder needs data.path=DIR" in missing.stderr
