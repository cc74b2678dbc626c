"""Schedules' values at chosen steps, warm-up, and which variables receive weight decay."""
import keras
import numpy as np
import pytest

from resnet_train import optim
from resnet_train.errors import ConfigError
from resnet_train.models import build


def lr_at(schedule, step):
    return float(np.asarray(schedule(step)))


def test_step_schedule_is_the_papers_91_136_of_182_epochs():
    steps_per_epoch = 390  # 50,000 / 128
    total = 182 * steps_per_epoch
    s = optim.lr_schedule({"name": "step", "milestones": [0.5, 0.75], "factor": 0.1}, 0.1, total, steps_per_epoch)
    assert lr_at(s, 0) == pytest.approx(0.1)
    assert lr_at(s, 91 * steps_per_epoch - 1) == pytest.approx(0.1)
    assert lr_at(s, 91 * steps_per_epoch + 1) == pytest.approx(0.01)
    assert lr_at(s, 136 * steps_per_epoch) == pytest.approx(0.01)
    assert lr_at(s, 137 * steps_per_epoch) == pytest.approx(0.001)


def test_cosine_and_warmup():
    s = optim.lr_schedule({"name": "cosine", "floor": 0.0, "warmup_epochs": 1}, 0.1, 100, 10)
    assert lr_at(s, 0) == pytest.approx(0.01)  # (0 + 1) / 10 of the cosine value
    cosine = lambda step: 0.05 * (1 + np.cos(np.pi * step / 100))  # noqa: E731
    assert lr_at(s, 4) == pytest.approx(0.5 * cosine(4), rel=1e-4)  # half-way up the ramp
    assert lr_at(s, 20) == pytest.approx(cosine(20), rel=1e-4)
    assert lr_at(s, 50) == pytest.approx(0.05, rel=1e-4)
    assert lr_at(s, 100) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("cfg", [{"name": "step", "milestones": [91, 136]}, {"name": "nope"}])
def test_bad_schedules_are_config_errors(cfg):
    with pytest.raises(ConfigError):
        optim.lr_schedule(cfg, 0.1, 100, 10)


def test_weight_decay_goes_to_kernels_not_bn_or_biases():
    keras.backend.clear_session()
    model = build(8, 10, variant="cifar")
    decayed = {v.path for v in model.trainable_variables if optim.decayed(v)}
    spared = {v.path for v in model.trainable_variables if not optim.decayed(v)}
    assert all(p.endswith("kernel") for p in decayed) and decayed
    assert {p.rsplit("/", 1)[1] for p in spared} == {"gamma", "beta", "bias"}
    assert all(optim.decayed(v, decay_bn=True) for v in model.trainable_variables)
