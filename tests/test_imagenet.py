"""data=imagenet through the real tfds imagenet2012 builder, on tiny tars in the real layout."""

import io
import tarfile

import numpy as np
import pytest
from helpers import cli_in_process, compose
from PIL import Image

from resnet_train.data import tfds_source
from resnet_train.errors import ConfigError
from resnet_train.training.loop import train_and_evaluate

WNIDS = ["n01440764", "n01443537", "n01484850"]  # the first classes of tfds' labels.txt


def jpeg(size, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_fake_imagenet(manual, per_class=4, val=6):
    """ILSVRC2012_img_train.tar: an outer tar of <wnid>.tar files of JPEGs; _val.tar: flat JPEGs."""
    manual.mkdir(parents=True, exist_ok=True)
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(per_class):
                    add(tar, f"{wnid}_{i}.JPEG", jpeg((80 + 10 * i, 60 + 7 * c), seed=10 * c + i))
            add(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(1, val + 1):
            add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg((70, 90), seed=100 + i))


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    write_fake_imagenet(root / "manual")
    return {"data_dir": root / "tfds", "manual_dir": root / "manual"}


def test_imagenet_streams_encoded_images_from_the_real_builder(fake_imagenet):
    splits = tfds_source.load(
        "imagenet2012",
        data_dir=fake_imagenet["data_dir"],
        manual_dir=fake_imagenet["manual_dir"],
        download=False,
        in_memory=False,
        test_split="validation",
        mean=[120, 115, 100],
        std=[58, 57, 57],
    )
    info = splits.info
    assert (info.num_classes, info.train_size, info.test_size) == (1000, 12, 6)
    assert info.encoded and info.image_shape == (224, 224, 3)
    assert info.class_names[:3] == WNIDS
    encoded, label = next(iter(splits.train))
    assert encoded.dtype.name == "string" and int(label) in (0, 1, 2)


def test_imagenet_recipe_trains_a_step_end_to_end(fake_imagenet, tmp_path):
    recipe = compose("data=imagenet")
    assert (recipe.depth, recipe.epochs, recipe.batch_size, recipe.data.image_size) == (50, 90, 256, 224)
    assert (recipe.optimizer.lr, recipe.optimizer.momentum, recipe.optimizer.weight_decay) == (0.1, 0.9, 1e-4)
    assert (recipe.schedule.name, recipe.schedule.warmup_epochs) == ("cosine", 5)
    assert (recipe.augment.label_smoothing, recipe.augment.crop, recipe.augment.horizontal_flip) == (0.1, "auto", True)
    step = compose("data=imagenet", "schedule=imagenet_step").schedule
    assert [round(m * 90) for m in step.milestones] == [30, 60, 80] and step.warmup_epochs == 5

    # The real path at a CPU-friendly size (model.variant is auto-picked only from 128 px on).
    cfg = compose(
        "data=imagenet",
        "depth=18",
        "model.variant=imagenet",
        "epochs=1",
        "schedule.warmup_epochs=0",
        "batch_size=4",
        "data.image_size=64",
        f"data.data_dir={fake_imagenet['data_dir']}",
        f"data.manual_dir={fake_imagenet['manual_dir']}",
    )
    results = train_and_evaluate(cfg, tmp_path / "run")
    assert results["model"] == "imagenet_resnet18"
    assert results["steps"] == 12 // 4 and results["test"]["examples"] == 6


def test_the_augmentation_gallery_decodes_streamed_jpegs(fake_imagenet, tmp_path, monkeypatch, cli):
    """resnet-show-augment data=imagenet: the originals decoded as evaluation sees them, the
    augmented columns through the encoded (decode + inception crop) path."""
    out = tmp_path / "gallery.png"
    monkeypatch.chdir(tmp_path)
    done = cli(
        "data=imagenet",
        "data.image_size=64",
        "images=2",
        "versions=2",
        f"data.data_dir={fake_imagenet['data_dir']}",
        f"data.manual_dir={fake_imagenet['manual_dir']}",
        f"out={out}",
        entry="resnet-show-augment",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_imagenet_tars_fail_at_once_naming_both(tmp_path, monkeypatch, capsys):
    # "At once", checked without a clock: neither a download nor a probe of a host is attempted
    # (what tfds would retry for minutes); either one fails the test.
    import tensorflow_datasets as tfds

    def never(*args, **kwargs):
        pytest.fail("a download or a network probe was attempted")

    monkeypatch.setattr(tfds_source, "host_reachable", never)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", never)
    code, _, err = cli_in_process(
        monkeypatch,
        capsys,
        "resnet-train",
        "data=imagenet",
        f"data.data_dir={tmp_path / 'tfds'}",
        f"data.manual_dir={tmp_path / 'manual'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert code == 2, err[-2000:]
    (error,) = err.strip().splitlines()
    assert error.startswith(
        f"resnet-train: error: imagenet2012 is not prepared in {tmp_path / 'tfds'} and it "
        f"cannot be downloaded automatically: put "
    )
    assert "ILSVRC2012_img_train.tar" in error and "ILSVRC2012_img_val.tar" in error
    assert f"into {tmp_path / 'manual'} (or set data.manual_dir" in error


def test_encoded_pipeline_crops_to_the_model_size(fake_imagenet):
    import tensorflow as tf

    from resnet_train.data import pipeline
    from resnet_train.data.augment import make_augment

    splits = tfds_source.load(
        "imagenet2012",
        data_dir=fake_imagenet["data_dir"],
        download=False,
        in_memory=False,
        test_split="validation",
        image_size=56,
        mean=[1, 1, 1],
        std=[1, 1, 1],
    )
    augment = make_augment({"crop": "auto", "horizontal_flip": True}, splits.info.image_shape, encoded=True)
    images, _ = next(iter(pipeline.train_batches(splits.train, 12, 4, 0, 0, augment, shuffle_buffer=5)))
    assert images.shape == (4, 56, 56, 3) and images.dtype == tf.uint8
    evaluated = list(pipeline.eval_batches(splits.test, 4, pipeline.eval_preprocess(splits.info)))
    assert [x.shape[0] for x, _, _ in evaluated] == [4, 2]
    assert all(x.shape[1:] == (56, 56, 3) for x, _, _ in evaluated)


def test_val_split_on_streamed_data_is_refused(fake_imagenet):
    from resnet_train import data as data_lib

    with pytest.raises(ConfigError) as caught:
        # manual_dir: prepared here if no earlier test did (the test does not depend on the order)
        data_lib.load(
            {
                "source": "tfds",
                "name": "imagenet2012",
                "data_dir": str(fake_imagenet["data_dir"]),
                "manual_dir": str(fake_imagenet["manual_dir"]),
                "cache": False,
                "test_split": "validation",
                "val_split": 0.1,
                "mean": [1, 1, 1],
                "std": [1, 1, 1],
            }
        )
    # A setting the user chose (exit 2), with the way out: the dataset's own validation split.
    assert str(caught.value) == (
        "data.val_split needs in-memory data; imagenet2012 is streamed: use its own "
        "validation split (data.test_split) instead"
    )
    assert caught.value.exit_code == 2


def test_streamed_files_are_read_in_a_new_order_each_epoch_and_the_same_on_resume(tmp_path):
    """ImageNet-sized data is shuffled through a buffer of 10k of its 1.28M examples: only a new file
    order per epoch, seeded by (seed, epoch), makes one epoch's sequence differ from the next. (A
    buffer of 1 here: what changes between epochs is the file order alone.)"""
    import hashlib

    import tensorflow as tf
    import tensorflow_datasets as tfds

    from resnet_train.data import pipeline

    manual, data_dir = tmp_path / "manual", tmp_path / "tfds"
    write_fake_imagenet(manual, per_class=8)
    # 6 files per split (tfds would write one for so few images), as the real 1024 train files.
    tfds.builder("imagenet2012", data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), num_shards=6)
    )
    splits = tfds_source.load(
        "imagenet2012",
        data_dir=data_dir,
        download=False,
        in_memory=False,
        test_split="validation",
        mean=[1, 1, 1],
        std=[1, 1, 1],
    )
    tf.random.set_seed(0)  # training sets the global seed (cfg.seed); tf.data mixes it into op seeds

    def sequence(seed, epoch, skip=0):
        ds = pipeline.train_batches(
            splits.train_for_epoch(seed, epoch), 24, 4, seed, epoch, shuffle_buffer=1, skip_batches=skip
        )
        return [hashlib.sha1(x).hexdigest() for images, _ in ds.as_numpy_iterator() for x in images]

    epochs = [sequence(0, e) for e in range(3)]
    assert len(epochs[0]) == 24 and sorted(epochs[0]) == sorted(epochs[1])  # every image once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # in another order each epoch
    assert sequence(0, 1) == epochs[1]  # the same (seed, epoch), the same order: exact resume
    assert sequence(0, 1, skip=2) == epochs[1][8:]  # and a resumed epoch continues it
    assert sequence(1, 1) != epochs[1]
