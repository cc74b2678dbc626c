"""The learning-rate curve a training config will follow, drawn before any training:

    resnet-plot-schedule schedule=onecycle optimizer.lr=0.4 out=onecycle.png
    resnet-plot-schedule data=cifar10 schedule=step schedule.warmup_epochs=2

It composes the real train config (any override the trainer takes) and builds the trainer's own
schedule (optim.effective_lr, schedules.lr_schedule), so the picture is the run's curve.
"""

from __future__ import annotations

import logging

from resnet_train import config as config_lib
from resnet_train.errors import UserError

log = logging.getLogger(__name__)


def train_size(cfg) -> int:
    """`train_size` when given, else the dataset's training examples (read offline: a dataset that
    is not on this machine is an error suggesting train_size=N)."""
    if cfg.train_size is not None:
        size = cfg.train_size
        if size < 1:
            raise UserError(f"train_size must be a positive integer, e.g. 50000 (got {size!r})")
        return size
    from resnet_train import data as data_lib

    try:
        return int(data_lib.load(cfg.data).info.train_size)
    except UserError as error:
        raise UserError(f"{error} -- or give the training set's size: train_size=N") from None


def schedule_curve(cfg):
    """(lr at every step of the run, steps per epoch) for a composed train config."""
    from resnet_train import optim
    from resnet_train.optim import schedules

    step_batch = config_lib.step_batch(cfg)  # optimizer steps: accumulated micro-batches count once
    steps_per_epoch = train_size(cfg) // step_batch
    if steps_per_epoch < 1:
        raise UserError(f"a batch of {step_batch} is larger than the training set")
    _, total = schedules.run_length(cfg, steps_per_epoch)
    lr = optim.effective_lr(cfg.optimizer, step_batch)
    schedule = schedules.lr_schedule(cfg.schedule, lr, total, steps_per_epoch, cfg.optimizer.lr)
    return schedules.curve(schedule, total), steps_per_epoch


def plot_schedule(cfg):
    """Writes cfg.out (a PNG); returns (its path, the lr per step)."""
    from resnet_train.report.plots import lr_curve

    lrs, steps_per_epoch = schedule_curve(cfg)
    title = (
        f"{cfg.schedule.name} schedule, {cfg.optimizer.name}: peak lr {lrs.max():.4g}, "
        f"{len(lrs)} steps, {steps_per_epoch} per epoch"
    )
    return lr_curve(lrs, steps_per_epoch, cfg.out, title), lrs
