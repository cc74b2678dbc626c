"""data.repeated_aug=N: repeated augmentation (Hoffer et al. 2020, as DeiT and "ResNet strikes back"
A1/A2 train): each image N times in a row in the batch under augmentations of its own, the epoch's
length kept; a resumed epoch gives the uninterrupted one's batches."""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, compose

from resnet_train.config import validate
from resnet_train.data import pipeline
from resnet_train.data.augment import make_augment
from resnet_train.errors import ConfigError

SIZE, BATCH = 48, 12
IMAGES = np.random.default_rng(0).integers(0, 256, (SIZE, 32, 32, 3), dtype=np.uint8)
DATA = tf.data.Dataset.from_tensor_slices((IMAGES, np.arange(SIZE)))  # the label names the image


def epoch(augment=None, repeats=3, skip=0, seed=1):
    batches = pipeline.train_batches(DATA, SIZE, BATCH, seed, 0, augment, skip_batches=skip, repeats=repeats)
    return [(x.numpy(), y.numpy()) for x, y in batches]


def test_each_image_comes_n_times_in_a_row_and_the_epoch_keeps_its_length():
    batches = epoch()
    labels = np.concatenate([y for _, y in batches])
    assert len(batches) == SIZE // BATCH and len(labels) == SIZE
    groups = labels.reshape(-1, 3)
    assert np.all(groups == groups[:, :1])  # copies side by side, in the same batch (12 = 4 x 3)
    assert len(set(groups[:, 0])) == SIZE // 3  # a third of the images this epoch, each once
    images = np.concatenate([x for x, _ in batches]).reshape(-1, 3, 32, 32, 3)
    assert np.all(images == images[:, :1])  # without augmentation the copies are the same image
    assert sorted(epoch(repeats=1)[0][1]) != sorted(batches[0][1])  # and N=1 is the plain epoch


def test_the_copies_get_augmentations_of_their_own():
    augment = make_augment(compose(*TINY, "augment=standard").augment, (32, 32, 3), (127.0, 127.0, 127.0))
    batches = epoch(augment)
    labels = np.concatenate([y for _, y in batches]).reshape(-1, 3)
    assert np.all(labels == labels[:, :1])  # copies of one image
    images = np.concatenate([x for x, _ in batches]).reshape(-1, 3, 32, 32, 3)
    differ = [not np.array_equal(group[0], group[1]) for group in images]
    assert np.mean(differ) > 0.8, np.mean(differ)  # pad-crop + flip: almost every pair differs


def test_a_resumed_epoch_gives_the_uninterrupted_batches():
    augment = make_augment(compose(*TINY, "augment=standard").augment, (32, 32, 3), (127.0, 127.0, 127.0))
    whole, resumed = epoch(augment), epoch(augment, skip=2)
    assert len(resumed) == len(whole) - 2
    for (x, y), (rx, ry) in zip(whole[2:], resumed):
        assert np.array_equal(y, ry) and np.array_equal(x, rx)


@pytest.mark.parametrize("value", [0, -2])
def test_fewer_than_one_copy_is_refused_in_one_line(value):
    with pytest.raises(ConfigError, match=rf"data.repeated_aug must be a positive integer \(got {value}\)"):
        validate(compose(*TINY, f"data.repeated_aug={value}"))


def test_a_run_with_repeated_augmentation_trains(tmp_path):
    from resnet_train.training.loop import train_and_evaluate

    run = tmp_path / "run"
    train_and_evaluate(compose(*TINY, "epochs=3", "data.repeated_aug=2", "data.limit_test=32"), run)
    losses = [
        r["loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r.get("split") == "train"
    ]
    assert len(losses) == 3 and losses[-1] < losses[0], losses


def test_a_run_with_every_strikes_back_piece_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    """Repeated augmentation's copies, DropPath's masks (its draw counts are checkpointed) and BCE:
    a run stopped at step 6 of 8 and resumed ends with the uninterrupted run's weights, bit for bit."""
    from helpers import StepStop
    from test_faults import assert_same_run

    from resnet_train.errors import Preempted
    from resnet_train.training.loop import train_and_evaluate

    pieces = (*TINY, "epochs=2", "data.repeated_aug=2", "model.drop_path=0.3", "loss=bce", "data.limit_test=32")
    straight = tmp_path / "straight"
    train_and_evaluate(compose(*pieces), straight)
    stop = StepStop(monkeypatch, at=5)
    run = tmp_path / "run"
    with pytest.raises(Preempted, match="at step 6 of 8"):  # mid-epoch 2
        train_and_evaluate(compose(*pieces), run)
    stop.steps = 0
    train_and_evaluate(compose(*pieces), run)
    assert stop.steps == 8 - 6
    assert_same_run(run, straight, steps=8)
