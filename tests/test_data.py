"""Data sources and pipelines: the embedded set, the real tfds CIFAR builder on a fake archive,
the fast offline failure, and the properties of the train / eval pipelines."""

import os
import socket

import numpy as np
import pytest

from resnet_train import data as data_lib
from resnet_train.data import embedded, pipeline, synthetic, tfds_source
from resnet_train.data.augment import make_augment
from resnet_train.errors import ConfigError, DataError

CROP_FLIP = {"crop": "pad", "padding": 2, "horizontal_flip": True}


def arrays(ds):
    images, labels = zip(*ds.as_numpy_iterator())
    return np.stack(images), np.array(labels)


def test_embedded_digits_is_real_fixed_and_stratified():
    splits = embedded.load()
    info = splits.info
    assert (info.train_size, info.test_size, info.num_classes) == (1437, 360, 10)
    x, y = arrays(splits.test)
    assert x.shape == (360, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).min() >= 34  # every digit is in the test set
    x2, _ = arrays(embedded.load().test)
    np.testing.assert_array_equal(x, x2)  # the split does not move between runs
    assert len(info.mean) == 3 and 0 < info.std[0] < 128


def test_limits_keep_the_first_examples():
    cfg = {
        "source": "synthetic",
        "image_shape": [8, 8, 3],
        "train_size": 50,
        "test_size": 20,
        "limit_train": 16,
        "limit_test": 5,
    }
    splits = data_lib.load(cfg)
    assert (splits.info.train_size, splits.info.test_size) == (16, 5)
    assert len(list(splits.train)) == 16 and len(list(splits.test)) == 5


def test_tfds_cifar10_builder_prepares_from_a_fake_archive_offline(fake_cifar10):
    splits = tfds_source.load("cifar10", data_dir=fake_cifar10["data_dir"], manual_dir=fake_cifar10["manual_dir"])
    info = splits.info
    assert (info.train_size, info.test_size, info.num_classes) == (20, 4, 10)
    assert info.image_shape == (32, 32, 3)
    assert info.class_names == fake_cifar10["names"]
    # The pixels and labels come through the real binary-format parser unchanged.
    x, y = arrays(splits.test)
    labels, images = fake_cifar10["written"]["test_batch.bin"]
    order = np.argsort([img.tobytes() for img in x])
    expected = np.argsort([img.tobytes() for img in images])
    np.testing.assert_array_equal(x[order], images[expected])
    np.testing.assert_array_equal(y[order], labels[expected])
    # Once prepared it loads from data_dir alone, with no archive in sight.
    again = tfds_source.load("cifar10", data_dir=fake_cifar10["data_dir"], manual_dir="/nonexistent")
    assert again.info.train_size == 20


def test_tfds_cifar100_uses_the_fine_labels(fake_cifar):
    fake = fake_cifar("cifar100")
    splits = tfds_source.load("cifar100", data_dir=fake["data_dir"], manual_dir=fake["manual_dir"])
    assert (splits.info.num_classes, splits.info.train_size, splits.info.test_size) == (100, 20, 4)
    assert splits.info.class_names == fake["names"]
    _, y = arrays(splits.test)
    assert sorted(y) == sorted(fake["written"]["test.bin"][0])


def test_wrong_checksum_is_one_clear_error(tmp_path):
    from helpers import write_fake_cifar

    write_fake_cifar(tmp_path / "manual" / "cifar-10-binary.tar.gz")
    with pytest.raises(DataError, match="expected checksum.*download it again"):
        tfds_source.load("cifar10", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "manual")


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


@pytest.fixture
def no_tfds_download(monkeypatch):
    """tfds's own download (which retries an unreachable host for minutes) must never start:
    the deterministic form of "fails within seconds"."""
    import tensorflow_datasets as tfds

    def refuse(*args, **kwargs):
        raise AssertionError("tfds download_and_prepare was called")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)


def test_missing_dataset_fails_fast_naming_folders_and_archive(tmp_path, monkeypatch, no_tfds_download):
    # data.download=true (the default) with the download host unreachable, as it is offline:
    # the probe answers, tfds is never asked to download.
    probed = []
    monkeypatch.setattr(tfds_source, "host_reachable", lambda url, timeout=3.0: probed.append(url) or False)
    with pytest.raises(DataError) as error:
        tfds_source.load("cifar10", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "manual")
    assert probed == [CIFAR10_URL]
    assert str(error.value) == (
        f"cifar10 is not prepared in {tmp_path / 'tfds'} and its download host is unreachable: put "
        f"cifar-10-binary.tar.gz (from {CIFAR10_URL}) into {tmp_path / 'manual'} (or set data.manual_dir to "
        f"the folder that holds it), or point data.data_dir at a prepared tensorflow-datasets folder"
    )
    assert not list((tmp_path / "tfds").rglob("*.tmp*"))  # no half-downloads left behind


def test_download_false_fails_at_once_and_never_probes(tmp_path, monkeypatch, no_tfds_download):
    def no_probe(url, timeout=3.0):
        raise AssertionError(f"probed {url} with data.download=false")

    monkeypatch.setattr(tfds_source, "host_reachable", no_probe)
    with pytest.raises(DataError) as error:  # through the config, as the CLI does
        data_lib.load(
            {
                "source": "tfds",
                "name": "cifar10",
                "data_dir": str(tmp_path / "tfds"),
                "manual_dir": str(tmp_path / "manual"),
                "download": False,
            }
        )
    assert str(error.value) == (
        f"cifar10 is not prepared in {tmp_path / 'tfds'} and downloads are off (data.download=false): put "
        f"cifar-10-binary.tar.gz (from {CIFAR10_URL}) into {tmp_path / 'manual'} (or set data.manual_dir to "
        f"the folder that holds it), or point data.data_dir at a prepared tensorflow-datasets folder, or set "
        f"data.download=true to let tensorflow-datasets download it"
    )


def test_download_false_still_prepares_from_the_manual_archive(fake_cifar10, monkeypatch):
    # "false" means no network, not "no preparing": the archive in manual_dir is enough.
    monkeypatch.setattr(tfds_source, "host_reachable", lambda url, timeout=3.0: pytest.fail("probed"))
    splits = tfds_source.load(
        "cifar10", data_dir=fake_cifar10["data_dir"], manual_dir=fake_cifar10["manual_dir"], download=False
    )
    assert (splits.info.train_size, splits.info.test_size) == (20, 4)


@pytest.mark.parametrize("value", ["maybe", "false ", None])
def test_download_is_strictly_a_boolean(value):
    # bool("maybe") is True: a string would quietly mean "download". The schema reads YAML's
    # booleans (true/false/yes/no) and refuses anything else.
    with pytest.raises(ConfigError) as error:
        data_lib.load({"source": "tfds", "name": "cifar10", "download": value})
    assert str(error.value) == (
        f"data.download must be true or false (got {value!r}): false never touches the network, true lets "
        f"tensorflow-datasets download a dataset that is not prepared"
    )


def test_host_probe_is_false_for_a_refused_port_and_bounded_by_its_timeout(monkeypatch):
    # A port bound but not listening refuses connections (RST) for as long as we hold it: no other
    # process can take it meanwhile, unlike a fixed "closed" port such as 9. Loopback only.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        timeouts = []
        real = socket.create_connection
        monkeypatch.setattr(
            socket,
            "create_connection",
            lambda address, timeout: timeouts.append(timeout) or real(address, timeout=timeout),
        )
        assert tfds_source.host_reachable(f"http://127.0.0.1:{port}/x", timeout=2) is False
        assert tfds_source.host_reachable(f"http://127.0.0.1:{port}/x") is False
    # The probe never waits longer than its timeout (3 s by default), whatever the host does.
    assert timeouts == [2, 3.0]


def test_host_probe_is_true_for_a_listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert tfds_source.host_reachable(f"http://127.0.0.1:{server.getsockname()[1]}/x", timeout=30) is True


def test_the_network_guard_refuses_all_but_the_loopback(network_log, network_blocked):
    """conftest's guard, which makes "no test touches the network" checkable on a connected machine."""
    import subprocess
    import sys

    NetworkBlocked = network_blocked  # the guard's exception class (a fixture: conftest defines it)
    with pytest.raises(NetworkBlocked, match=r"connect to \('192\.0\.2\.1', 80\)"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(NetworkBlocked, match="send to"):
        udp.sendto(b"x", ("192.0.2.1", 53))
    # Not an OSError: the probe's "except OSError -> unreachable" cannot hide an attempted download.
    with pytest.raises(NetworkBlocked, match="name lookup of 'www.cs.toronto.edu'"):
        tfds_source.host_reachable(CIFAR10_URL)
    # Python subprocesses (the CLI, joblib's workers) get the same guard through sitecustomize.
    child = subprocess.Popen(
        [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = child.communicate(timeout=60)
    assert child.returncode == 1 and "NetworkBlocked: network access in a test: connect to ('192.0.2.1', 80)" in err
    # Every attempt is logged, so a test fails even where the code swallowed the exception.
    attempts = network_log.take()
    assert [line.split(": ", 1)[0] for line in attempts] == [f"pid {os.getpid()}"] * 3 + [f"pid {child.pid}"]
    assert "connect to ('192.0.2.1', 80)" in attempts[0] and "send to ('192.0.2.1', 53)" in attempts[1]

    # The loopback stays open (multi-worker tests, the probe tests above).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(2)
        for host in ("127.0.0.1", "localhost"):
            socket.create_connection((host, server.getsockname()[1]), timeout=30).close()
    assert network_log.take() == []


def test_unknown_tfds_name_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no dataset named"):
        tfds_source.load("no_such_dataset_xyz", data_dir=tmp_path)


def small_splits(n=40):
    return synthetic.load(image_shape=(8, 8, 3), num_classes=4, train_size=n, test_size=10)


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_train_batches_drop_remainder_and_depend_only_on_seed_and_epoch():
    s = small_splits()
    aug = make_augment(CROP_FLIP)
    a = batches(pipeline.train_batches(s.train, 40, 16, seed=1, epoch=3, augment=aug))
    b = batches(pipeline.train_batches(s.train, 40, 16, seed=1, epoch=3, augment=aug))
    c = batches(pipeline.train_batches(s.train, 40, 16, seed=1, epoch=4, augment=aug))
    assert len(a) == 2 and all(x.shape == (16, 8, 8, 3) and x.dtype == np.uint8 for x, _ in a)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])  # a new epoch, a new order and new crops


def test_skip_batches_resumes_the_same_epoch_exactly():
    s = small_splits(64)
    aug = make_augment(CROP_FLIP)
    full = batches(pipeline.train_batches(s.train, 64, 16, seed=0, epoch=1, augment=aug))
    tail = batches(pipeline.train_batches(s.train, 64, 16, seed=0, epoch=1, augment=aug, skip_batches=2))
    assert len(tail) == 2
    for (xf, yf), (xt, yt) in zip(full[2:], tail):
        np.testing.assert_array_equal(xf, xt)
        np.testing.assert_array_equal(yf, yt)


@pytest.mark.parametrize("pipelines", [1, 2])
def test_training_stream_is_the_per_epoch_pipelines_one_after_another(pipelines):
    """The command's one pipeline for all epochs yields, bit for bit, the batches of a pipeline per
    epoch (the first resumed 2 batches in), with per-example and per-batch augmentation and under
    several workers' sharding: order and randomness still depend only on (seed, epoch)."""
    from resnet_train.data.augment import make_batch_augment

    s = small_splits(64)
    aug = make_augment(CROP_FLIP)
    mix = make_batch_augment({"mixup_alpha": 0.2, "cutmix_alpha": 1.0}, 4)
    shards = dict(pipelines=pipelines, pipeline_id=pipelines - 1, replica_batch=4)
    expected = []
    for epoch in (3, 4, 5):
        skip = 2 if epoch == 3 else 0
        expected += batches(pipeline.train_batches(s.train, 64, 16, 7, epoch, aug, mix, skip_batches=skip, **shards))
    stream = batches(pipeline.training_stream(s.train, 64, 16, 7, 3, 6, aug, mix, skip_batches=2, **shards))
    assert len(stream) == len(expected) == (2 + 4 + 4) * 4 // pipelines
    for (xe, ye), (xs, ys) in zip(expected, stream):
        np.testing.assert_array_equal(xe, xs)
        np.testing.assert_array_equal(ye, ys)
    assert not np.array_equal(expected[0][0], expected[len(expected) // 2][0])  # epochs differ


def test_eval_batches_count_every_example_once():
    s = small_splits()
    seen = [(x.numpy(), y.numpy(), w.numpy()) for x, y, w in pipeline.eval_batches(s.test, 4)]
    _, labels = arrays(s.test)
    np.testing.assert_array_equal(np.concatenate([y for _, y, _ in seen]), labels)  # 10 = 4 + 4 + 2
    padded = [
        (x.numpy(), y.numpy(), w.numpy())
        for x, y, w in pipeline.eval_batches(s.test, 4, size=10, image_shape=(8, 8, 3))
    ]
    assert [len(y) for _, y, _ in padded] == [4, 4, 4]  # full batches for every replica ...
    weights = np.concatenate([w for _, _, w in padded])
    np.testing.assert_array_equal(weights, [1] * 10 + [0, 0])  # ... and the padding counts for nothing
    np.testing.assert_array_equal(np.concatenate([y for _, y, _ in padded])[:10], labels)


def test_validation_split_is_fixed_disjoint_and_sized():
    def carve(split):
        return data_lib.load(
            {"source": "synthetic", "image_shape": [4, 4, 1], "train_size": 100, "test_size": 10, "val_split": split}
        )

    a, b = carve(0.2), carve(0.2)
    assert (a.info.train_size, a.info.val_size, a.info.test_size) == (80, 20, 10)
    key = lambda ds: sorted(x.tobytes() for x, _ in ds.as_numpy_iterator())  # noqa: E731
    assert key(a.val) == key(b.val)  # the same examples every run
    assert not set(key(a.val)) & set(key(a.train))
    assert len(key(a.val)) + len(key(a.train)) == 100
    assert carve(30).info.val_size == 30
    for bad in (1.5, 100, -1, "x"):
        with pytest.raises(Exception, match="val_split"):
            carve(bad)


def long_tailed(counts, seed=0):
    """Splits whose "images" are the examples' indices (1x1, int64), labels long-tailed by `counts`."""
    import tensorflow as tf

    from resnet_train.data.info import DatasetInfo, Splits

    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    x = np.arange(len(labels)).reshape(-1, 1, 1, 1)
    info = DatasetInfo("long_tail", len(counts), (1, 1, 1), len(labels), 1, [str(c) for c in range(len(counts))])
    train = tf.data.Dataset.from_tensor_slices((x, labels))
    return Splits(train, train.take(1), info), labels


@pytest.mark.parametrize("val_split,split_seed", [(0.1, 0), (20, 3), (0.25, 1), (7, 2)])
def test_the_validation_split_holds_out_each_classes_share(val_split, split_seed):
    """data.val_split on long-tailed classes (10:2:1 and rarer): every class with 2 or more examples
    is in validation with its share of the count (within one example), keeps one for training; a
    class of one example stays in training. Drawn uniformly, the class of 2 would be missing from
    validation 81% of the time (and with it from balanced accuracy and macro-F1)."""
    counts = np.array([150, 30, 15, 5, 2, 1])
    splits, labels = long_tailed(counts)
    carved = data_lib.carve_validation(splits, val_split, split_seed)
    val_x, val_y = arrays(carved.val)
    train_x, _ = arrays(carved.train)
    count = val_split if isinstance(val_split, int) else round(val_split * counts.sum())
    assert len(val_y) == carved.info.val_size == count and carved.info.train_size == counts.sum() - count
    assert sorted([*val_x.ravel(), *train_x.ravel()]) == list(range(counts.sum()))  # disjoint, all kept
    np.testing.assert_array_equal(labels[val_x.ravel()], val_y)
    held = np.bincount(val_y, minlength=len(counts))
    assert (held[counts >= 2] >= 1).all() and held[counts == 1].sum() == 0, held
    assert (held < counts).all()  # every class keeps a training example
    if count >= 5 * 2:  # room for proportions beside the one-each minimum
        assert (np.abs(held - count * counts / counts.sum()) < 1).all(), held
    again, _ = arrays(data_lib.carve_validation(long_tailed(counts)[0], val_split, split_seed).val)
    np.testing.assert_array_equal(again, val_x)  # the same examples every time


def test_validation_examples_are_the_same_for_every_seed_and_in_the_tools():
    """Training sets TF's global seed to `seed`; resnet-eval / -export set none. The held-out
    examples depend on neither: only on (dataset, val_split, split_seed)."""
    import keras
    import tensorflow as tf
    from omegaconf import OmegaConf

    from resnet_train.data import held_out_indices, stratified_held_out
    from resnet_train.tools.evaluate import eval_split

    cfg = {"source": "synthetic", "image_shape": [4, 4, 1], "train_size": 100, "test_size": 10, "val_split": 0.2}
    key = lambda ds: sorted(x.tobytes() for x, _ in ds.as_numpy_iterator())  # noqa: E731
    seen = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)  # what training does with cfg.seed
        splits = data_lib.load(cfg)
        seen.append(key(splits.val))
    tf.random.set_seed(None)  # the tools: no global seed
    val, size, _ = eval_split(OmegaConf.create({"data": cfg}), splits.info, None, "val")
    assert size == 20
    seen.append(key(val))
    assert seen[0] == seen[1] == seen[2]

    everything, labels = arrays(data_lib.load({**cfg, "val_split": None}).train)
    assert seen[0] == sorted(everything[i].tobytes() for i in stratified_held_out(labels, 20, 0))
    uniform = key(data_lib.load({**cfg, "split_method": "uniform"}).val)
    assert uniform == sorted(everything[i].tobytes() for i in held_out_indices(100, 20, 0))
    other = key(data_lib.load({**cfg, "split_seed": 1}).val)
    assert other != seen[0]  # split_seed picks another split
    with pytest.raises(Exception, match="split_seed"):
        data_lib.load({**cfg, "split_seed": -1})


def test_a_run_made_before_the_stratified_split_resumes_on_its_own_uniform_split(tmp_path, caplog):
    """A run whose saved config predates data.split_method drew data.val_split uniformly: resumed,
    and in the tools, it keeps exactly those validation examples (run_dir.RUN_OWNED)."""
    import logging

    from helpers import TINY, compose
    from omegaconf import OmegaConf

    from resnet_train.tools.evaluate import eval_split
    from resnet_train.training.loop import train_and_evaluate
    from resnet_train.training.runs import load_run

    run, common = tmp_path / "old", (*TINY, "data.val_split=32")
    train_and_evaluate(compose(*common, "epochs=1", "data.split_method=uniform"), run)  # the earlier version's draw
    for saved in (run / ".hydra" / "config.yaml", run / "checkpoints" / "config.yaml"):
        old = OmegaConf.load(saved)
        del old.data["split_method"]
        OmegaConf.save(old, saved)
    (run / "results.json").unlink()
    with caplog.at_level(logging.INFO):
        results = train_and_evaluate(compose(*common, "epochs=2"), run)  # today's default: stratified
    assert "with its own data.split_method=uniform" in caplog.text and "Resumed from" in caplog.text
    assert "held out for validation, drawn uniformly" in caplog.text and results["eval"]["examples"] == 32
    assert OmegaConf.load(run / "checkpoints" / "config.yaml").data.split_method == "uniform"

    key = lambda ds: sorted(x.tobytes() for x, _ in ds.as_numpy_iterator())  # noqa: E731
    loaded = load_run(run)
    val, _, _ = eval_split(loaded.cfg, loaded.info, None, "val")
    uniform = data_lib.load({**OmegaConf.to_container(loaded.cfg.data), "split_method": "uniform"})
    stratified = data_lib.load({**OmegaConf.to_container(loaded.cfg.data), "split_method": "stratified"})
    assert key(val) == key(uniform.val) != key(stratified.val)
