"""One preprocessing (resnet_train/data/preprocess.py) for the folder source, evaluation of streamed
data, resnet-predict and the exported SavedModel's serving_encoded signature: each path gives the
same pixels, hence the same predictions, for the same file."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import compose
from PIL import Image
from test_imagenet import write_fake_imagenet

from resnet_train.data import folder
from resnet_train.data.preprocess import geometry, preprocess, preprocess_file
from resnet_train.tools.export import export_saved_model
from resnet_train.tools.predict import predict_files
from resnet_train.training.loop import train_and_evaluate
from resnet_train.training.runs import load_images, load_run


def photo(size, seed, mode="RGB"):
    """A smooth picture with an off-centre bright bar (so crops and squashes differ), w x h."""
    w, h = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)
    x = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).copy()
    x[:, w // 5 : w // 5 + max(1, w // 12)] = (255, 240, 30)
    return Image.fromarray(x).convert(mode)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files of sizes unlike any model's, non-square: JPEG, PNG, grey PNG, RGBA PNG, GIF, BMP."""
    root = tmp_path_factory.mktemp("files")
    photo((300, 200), 1).save(root / "wide.jpg", quality=92)
    photo((97, 141), 2).save(root / "tall.png")
    photo((150, 110), 3, "L").save(root / "grey.png")
    photo((120, 180), 4, "RGBA").save(root / "alpha.png")
    photo((64, 40), 5).save(root / "small.gif")
    photo((45, 30), 6).save(root / "tiny.bmp")
    return root


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    """train/ and val/ class folders of non-square JPEGs and PNGs: red-ish and blue-ish pictures."""
    root = tmp_path_factory.mktemp("tree")
    for split, n in (("train", 6), ("val", 2)):
        for c, (name, tint) in enumerate((("red", (120, -60, -60)), ("blue", (-60, -60, 120)))):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                x = np.asarray(photo((90 + 13 * i, 60 + 9 * c), 10 * c + i + (50 if split == "val" else 0)))
                x = Image.fromarray(np.clip(x.astype(int) + tint, 0, 255).astype(np.uint8))
                x.save(root / split / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_geometry_by_image_size():
    assert geometry((32, 32, 3)) == "resize" and geometry((127, 127, 3)) == "resize"
    assert geometry((128, 128, 3)) == "center_crop" and geometry((224, 224, 3)) == "center_crop"


def test_small_images_are_resized_whole_as_pillow_does(files):
    """Below 128 px: the whole image, antialiased bilinear = Pillow's BILINEAR within a grey level."""
    for name, most, mean in (("tall.png", 1, 0.5), ("wide.jpg", 4, 1.5)):  # TF's and Pillow's JPEG
        ours = preprocess_file(files / name, (32, 32, 3)).astype(int)  # decoders differ by ~1
        pil = np.asarray(Image.open(files / name).convert("RGB").resize((32, 32), Image.BILINEAR)).astype(int)
        assert np.abs(ours - pil).max() <= most and np.abs(ours - pil).mean() < mean, name


def test_large_images_are_resized_256_and_centre_cropped_224(files):
    ours = preprocess_file(files / "tall.png", (224, 224, 3)).astype(int)
    # 97 x 141 -> short side 256: 256 x 372, then the central 224 x 224 (top 74, left 16).
    big = np.asarray(Image.open(files / "tall.png").convert("RGB").resize((256, 372), Image.BILINEAR)).astype(int)
    np.testing.assert_allclose(ours, big[74 : 74 + 224, 16 : 16 + 224], atol=1)
    assert preprocess_file(files / "wide.jpg", (128, 128, 3)).shape == (128, 128, 3)


def test_formats_grey_alpha_gif_bmp_and_unreadable_files(files, tmp_path):
    shape = (40, 40, 3)
    grey = preprocess_file(files / "grey.png", shape)
    assert grey.shape == shape and np.array_equal(grey[..., 0], grey[..., 2])
    Image.open(files / "alpha.png").convert("RGB").save(tmp_path / "no_alpha.png")
    np.testing.assert_array_equal(
        preprocess_file(files / "alpha.png", shape), preprocess_file(tmp_path / "no_alpha.png", shape)
    )  # alpha dropped
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = preprocess_file(tmp_path / "anim.gif", shape)
    assert first.shape == shape and abs(int(first.mean()) - 10) <= 2  # the first frame
    assert preprocess_file(files / "tiny.bmp", (224, 224, 3)).shape == (224, 224, 3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    png = (files / "tall.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    for bad in ("broken.png", "truncated.png", "missing.png"):
        assert preprocess_file(tmp_path / bad, shape) is None


@pytest.mark.parametrize("size", [32, 128])
def test_folder_source_stores_what_predict_sees(photo_tree, size):
    """The model trains on (and is evaluated on) exactly the pixels prediction gives it."""
    splits = folder.load(photo_tree, image_size=size)
    for split, ds in (("train", splits.train), ("val", splits.test)):
        paths, _, _ = folder.list_files(photo_tree / split, splits.info.class_names)
        stored = np.stack([x for x, _ in ds.as_numpy_iterator()])
        predicted, ok, failed = load_images(paths, splits.info)
        assert not failed and len(ok) == len(paths)
        np.testing.assert_array_equal(stored, predicted)


# ---- the exported model serves what resnet-predict predicts -------------------------------------
@pytest.fixture(scope="module")
def small_run(photo_tree, tmp_path_factory):
    """A ResNet-8 trained 2 epochs on the tree at 32 px (the whole-image geometry)."""
    run = tmp_path_factory.mktemp("small") / "run"
    train_and_evaluate(
        compose(
            "data=folder", f"data.path={photo_tree}", "depth=8", "epochs=2", "batch_size=4", "runtime.precision=float32"
        ),
        run,
    )
    return run


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """data=imagenet (streamed JPEGs through the real tfds builder) at 128 px: the centre-crop
    geometry. A ResNet-8 (CIFAR stem) keeps it to seconds."""
    root = tmp_path_factory.mktemp("imagenet")
    write_fake_imagenet(root / "manual")
    run = root / "run"
    train_and_evaluate(
        compose(
            "data=imagenet",
            "depth=8",
            "model.variant=cifar",
            "epochs=1",
            "batch_size=4",
            "data.image_size=128",
            "schedule.warmup_epochs=0",
            "runtime.precision=float32",
            f"data.data_dir={root / 'tfds'}",
            f"data.manual_dir={root / 'manual'}",
        ),
        run,
    )
    return run


@pytest.mark.parametrize("which", ["small_run", "imagenet_run"])
def test_serving_encoded_matches_resnet_predict(which, files, tmp_path, request):
    run = load_run(request.getfixturevalue(which))
    size = int(run.info.image_shape[0])
    assert geometry(run.info.image_shape) == ("resize" if which == "small_run" else "center_crop")
    paths = sorted(files.iterdir())
    served_model = tf.saved_model.load(str(export_saved_model(run.model, run.info, tmp_path / "saved_model")))
    served = served_model.signatures["serving_encoded"](encoded=tf.constant([p.read_bytes() for p in paths]))
    results, failed = predict_files(run, paths, top_k=run.info.num_classes)
    assert not failed and [r["path"] for r in results] == [str(p) for p in paths]
    probs = served["probabilities"].numpy()
    for r, p, c in zip(results, probs, served["classes"].numpy()):
        predicted = np.zeros(run.info.num_classes)
        for item in r["predictions"]:
            predicted[item["index"]] = item["probability"]
        assert r["predictions"][0]["index"] == int(c), r["path"]
        np.testing.assert_allclose(p, predicted, atol=1e-3, err_msg=r["path"])
        # Scale-free too (1000 ImageNet classes have probabilities ~1e-3): the log-probabilities,
        # i.e. the logits up to a constant, agree within 1e-3 (measured: < 1e-6).
        np.testing.assert_allclose(np.log(p), np.log(predicted), atol=1e-3, err_msg=r["path"])
    # And the images themselves: the serving graph's preprocessing is predict's, pixel for pixel.
    images, _, _ = load_images(paths, run.info)
    in_graph = np.stack([preprocess(tf.constant(p.read_bytes()), (size, size, 3)).numpy() for p in paths])
    np.testing.assert_array_equal(images, in_graph)


def test_streamed_evaluation_uses_the_same_function(files):
    from resnet_train.data import pipeline
    from resnet_train.data.info import DatasetInfo

    info = DatasetInfo("x", 2, (128, 128, 3), 1, 1, encoded=True)
    paths = [files / "wide.jpg", files / "tall.png"]
    ds = tf.data.Dataset.from_tensor_slices(([p.read_bytes() for p in paths], [0, 1]))
    ((batch, _, _),) = pipeline.eval_batches(ds, 2, pipeline.eval_preprocess(info))
    np.testing.assert_array_equal(batch.numpy(), load_images(paths, info)[0])
