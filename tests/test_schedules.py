"""Each schedule's values at chosen steps, warm-up, run length, the recipes' schedules, bad
values, and a resumed run's lr."""

import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import compose

from resnet_train import optim
from resnet_train.errors import ConfigError
from resnet_train.optim import schedules


def lr_at(schedule, step):
    return float(np.asarray(schedule(step)))


def test_step_milestones_in_fractions_epochs_and_steps_start_the_new_lr_at_the_milestone():
    # The default unit, fractions of training: [0.5, 0.75] of 182 epochs of 390 steps are the
    # paper's epochs 91 and 136.5 (steps 35,490 and 53,235).
    steps_per_epoch = 390  # 50,000 / 128
    s = schedules.lr_schedule(
        {"name": "step", "milestones": [0.5, 0.75], "factor": 0.1}, 0.1, 182 * steps_per_epoch, steps_per_epoch
    )
    assert [
        lr_at(s, k)
        for k in (0, 91 * steps_per_epoch - 1, 91 * steps_per_epoch, 53_234, 53_235, 182 * steps_per_epoch - 1)
    ] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    s = schedules.lr_schedule({"name": "step", "milestones": [2, 4], "milestones_unit": "epoch"}, 0.1, 60, 10)
    assert [lr_at(s, k) for k in (0, 19, 20, 39, 40, 59)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    s = schedules.lr_schedule(
        {"name": "step", "milestones": [15], "milestones_unit": "step", "factor": 0.5}, 0.2, 60, 10
    )
    assert [lr_at(s, k) for k in (14, 15)] == pytest.approx([0.2, 0.1])


def test_cosine_with_a_linear_warm_up():
    s = schedules.lr_schedule({"name": "cosine", "floor": 0.0, "warmup_epochs": 1}, 0.1, 100, 10)
    assert lr_at(s, 0) == pytest.approx(0.01)  # (0 + 1) / 10 of the cosine value
    cosine = lambda step: 0.05 * (1 + np.cos(np.pi * step / 100))  # noqa: E731
    assert lr_at(s, 4) == pytest.approx(0.5 * cosine(4), rel=1e-4)  # half-way up the ramp
    assert lr_at(s, 20) == pytest.approx(cosine(20), rel=1e-4)
    assert lr_at(s, 50) == pytest.approx(0.05, rel=1e-4)
    assert lr_at(s, 100) == pytest.approx(0.0, abs=1e-7)


def onecycle_reference(step, total, peak, pct, div, final_div, anneal):
    """PyTorch's OneCycleLR (two phases) written out."""
    initial, low = peak / div, peak / div / final_div
    up_end = pct * total - 1
    if step <= up_end:
        start, end, t = initial, peak, step / up_end
    else:
        start, end, t = peak, low, (step - up_end) / (total - 1 - up_end)
    if anneal == "cos":
        return end + (start - end) / 2 * (1 + math.cos(math.pi * t))
    return start + (end - start) * t


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_rises_to_the_peak_then_falls_to_the_floor(anneal):
    cfg = {"name": "onecycle", "pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0, "anneal": anneal}
    s = schedules.lr_schedule(cfg, 0.4, 100, 10)
    assert lr_at(s, 0) == pytest.approx(0.04)
    assert lr_at(s, 24) == pytest.approx(0.4) and max(schedules.curve(s, 100)) == pytest.approx(0.4)
    assert lr_at(s, 99) == pytest.approx(0.4 / 10 / 100, rel=1e-4)
    for step in (5, 12, 23, 25, 40, 77, 98):
        assert lr_at(s, step) == pytest.approx(onecycle_reference(step, 100, 0.4, 0.25, 10, 100, anneal), rel=1e-4)
    # Serializable, as every Keras schedule (the optimizer's config carries it).
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert lr_at(again, 40) == pytest.approx(lr_at(s, 40))


def test_exponential_decays_per_step_or_in_stairs():
    s = schedules.lr_schedule({"name": "exponential", "decay_rate": 0.5, "decay_epochs": 2}, 0.1, 100, 10)
    assert [lr_at(s, k) for k in (0, 10, 20, 50)] == pytest.approx([0.1, 0.1 * 0.5**0.5, 0.05, 0.1 * 0.5**2.5])
    s = schedules.lr_schedule(
        {"name": "exponential", "decay_rate": 0.5, "decay_epochs": 2, "staircase": True}, 0.1, 100, 10
    )
    assert [lr_at(s, k) for k in (19, 20, 39, 40)] == pytest.approx([0.1, 0.05, 0.05, 0.025])


def test_constant_with_a_warm_up_of_half_an_epoch():
    s = schedules.lr_schedule({"name": "constant", "warmup_epochs": 0.5}, 0.1, 100, 10)
    assert [lr_at(s, k) for k in (0, 2, 4, 5, 99)] == pytest.approx([0.02, 0.06, 0.1, 0.1, 0.1])


def test_a_constant_warm_up_holds_a_tenth_of_the_lr_then_returns_to_it():
    s = schedules.lr_schedule(
        {"name": "cosine", "warmup_steps": 4, "warmup_mode": "constant", "warmup_factor": 0.1}, 0.1, 100, 10
    )
    cosine = lambda step: 0.05 * (1 + np.cos(np.pi * step / 100))  # noqa: E731
    assert [lr_at(s, k) for k in (0, 2, 3)] == pytest.approx([0.1 * cosine(k) for k in (0, 2, 3)], rel=1e-5)
    assert [lr_at(s, k) for k in (4, 50)] == pytest.approx([cosine(4), cosine(50)], rel=1e-5)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert lr_at(again, 2) == pytest.approx(lr_at(s, 2)) and lr_at(again, 4) == pytest.approx(lr_at(s, 4))


def _train_size(cfg):
    """CIFAR-10's 50,000 training images less data.val_split (a count here; 0 / null: none)."""
    return 50_000 - (cfg.data.val_split or 0)


@pytest.mark.parametrize(
    "split", [[], ["data.val_split=0"], ["data.val_split=5000"]], ids=["default split", "val_split=0", "45k/5k split"]
)
def test_cifar10_paper_is_64k_steps_with_drops_at_32k_and_48k_whatever_the_split(split):
    """He et al. 2016a sec. 4.2: batch 128, lr 0.1, /10 at 32k and 48k iterations, stop at 64k."""
    cfg = compose("experiment=cifar10_paper", *split)
    steps_per_epoch = _train_size(cfg) // cfg.batch_size  # 390 (50k) or 351 (45k)
    epochs, total = schedules.run_length(cfg, steps_per_epoch)
    assert total == 64_000 and epochs == math.ceil(64_000 / steps_per_epoch)  # 165 or 183, the last cut short
    lr = optim.effective_lr(cfg.optimizer, cfg.batch_size)
    s = schedules.lr_schedule(cfg.schedule, lr, total, steps_per_epoch)
    steps = (0, 31_999, 32_000, 47_999, 48_000, 63_999)
    assert [lr_at(s, k) for k in steps] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("overrides", [[], ["depth=1202"], ["data.val_split=5000"]])
def test_cifar10_paper_deep_warms_up_at_a_constant_0_01_for_400_steps(overrides):
    """Sec. 4.2, ResNet-110 (and 1202): "we use 0.01 to warm up the training until the training
    error is below 80% (about 400 iterations), and then go back to 0.1"."""
    cfg = compose("experiment=cifar10_paper_deep", *overrides)
    assert cfg.depth == (1202 if overrides == ["depth=1202"] else 110) and cfg.model.shortcut == "A"
    steps_per_epoch = _train_size(cfg) // cfg.batch_size
    epochs, total = schedules.run_length(cfg, steps_per_epoch)
    assert total == 64_000
    s = schedules.lr_schedule(cfg.schedule, optim.effective_lr(cfg.optimizer, cfg.batch_size), total, steps_per_epoch)
    steps = (0, 200, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999)
    assert [lr_at(s, k) for k in steps] == pytest.approx([0.01, 0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def _recipe_schedule(cfg, steps_per_epoch):
    """(the recipe's schedule as a run builds it, its total steps, the lr of one optimizer step)."""
    from resnet_train import config as config_lib

    _, total = schedules.run_length(cfg, steps_per_epoch)
    lr = optim.effective_lr(cfg.optimizer, config_lib.step_batch(cfg))
    return schedules.lr_schedule(cfg.schedule, lr, total, steps_per_epoch, cfg.optimizer.lr), total, lr


@pytest.mark.parametrize(
    "overrides",
    [[], ["depth=1001", "batch_size=64", "optimizer.accumulate_steps=2"], ["data.val_split=5000"]],
    ids=["ResNet-164", "ResNet-1001 as its header says", "45k/5k split"],
)
def test_cifar10_preact_warms_up_at_a_constant_0_01_for_400_steps_and_runs_64k(overrides):
    """He et al. 2016b (Identity Mappings), appendix: batch 128, lr 0.1, /10 at 32k and 48k, stop at
    64k; "a smaller learning rate of 0.01 at the beginning 400 iterations and go back to 0.1". The
    1001-layer line of the recipe's header keeps 128 images per update (2 micro-batches of 64) and 0.1."""
    if "depth=1001" in overrides:  # the command the recipe's header gives
        header = (Path(__file__).parents[1] / "configs" / "experiment" / "cifar10_preact.yaml").read_text()
        assert f"experiment=cifar10_preact {' '.join(overrides)}\n" in header.split("defaults:")[0]
    cfg = compose("experiment=cifar10_preact", *overrides)
    assert cfg.model.variant == "preact" and cfg.optimizer.weight_decay == 1e-4 and cfg.optimizer.momentum == 0.9
    s, total, lr = _recipe_schedule(cfg, _train_size(cfg) // 128)
    assert total == 64_000 and lr == pytest.approx(0.1)
    steps = (0, 200, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999)
    assert [lr_at(s, k) for k in steps] == pytest.approx([0.01, 0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("batch", [256, 1024, 128])
def test_imagenet_90ep_follows_goyal_et_al(batch):
    """Goyal et al. 2017: lr 0.1 x batch / 256, /10 at epochs 30, 60, 80 of 90; the gradual warm-up
    from 0.1 up to that lr over 5 epochs only where the batch exceeds 256; gamma = 0 for the last
    batch norm of each residual block; no weight decay on batch norm."""
    cfg = compose("experiment=imagenet_90ep", f"batch_size={batch}")
    assert cfg.model.zero_init_residual and not cfg.optimizer.decay_bn and cfg.optimizer.weight_decay == 1e-4
    steps_per_epoch = 1_281_167 // batch
    s, total, lr = _recipe_schedule(cfg, steps_per_epoch)
    peak, warm = 0.1 * batch / 256, 5 * steps_per_epoch
    assert total == 90 * steps_per_epoch and lr == pytest.approx(peak)
    first = [lr_at(s, k) for k in (0, warm // 2, warm - 1, warm)]
    if batch > 256:  # 0.1 at step 0, half-way at half the warm-up, the scaled lr from its end
        assert first == pytest.approx([0.1, (0.1 + peak) / 2, peak - (peak - 0.1) / warm, peak], rel=1e-4)
        again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
        assert lr_at(again, warm // 2) == pytest.approx(first[1])
        from resnet_train.config import load_config
        from resnet_train.tools.schedule_plot import schedule_curve

        plot = load_config(["experiment=imagenet_90ep", f"batch_size={batch}", "train_size=1281167"], "plot_schedule")
        assert schedule_curve(plot)[0][[0, warm]] == pytest.approx([0.1, peak])  # resnet-plot-schedule's curve
    else:
        assert first == pytest.approx([peak] * 4)
    drops = [e * steps_per_epoch + d for e in (30, 60, 80) for d in (-1, 0)]
    expected = [peak * f for f in (1, 0.1, 0.1, 0.01, 0.01, 0.001)]
    assert [lr_at(s, k) for k in drops] == pytest.approx(expected, rel=1e-4)


def test_a_run_given_in_steps_derives_its_epochs_and_cuts_the_last_one_short():
    cfg = compose("steps=1000", "epochs=3")  # epochs is not used when steps is set
    assert schedules.run_length(cfg, 390) == (3, 1000)
    assert schedules.run_length(cfg, 100) == (10, 1000)
    assert schedules.run_length(compose("epochs=3"), 390) == (3, 1170)  # steps=null: whole epochs


@pytest.mark.parametrize("value", [0, -5])
def test_steps_must_be_null_or_a_positive_integer(value):
    from resnet_train import config

    with pytest.raises(ConfigError, match=r"^steps must be null or a positive integer"):
        config.validate(compose(f"steps={value}"))


@pytest.mark.parametrize("value, shown", [("1.5", "1.5"), ("many", "'many'"), ("True", "True")])
def test_steps_of_another_type_are_refused_by_the_schema(value, shown):
    from hydra.errors import ConfigCompositionException

    from resnet_train.cli.hydra_errors import explain

    with pytest.raises(ConfigCompositionException) as refused:
        compose(f"steps={value}")
    assert explain(refused.value, "train") == f"steps must be an integer (got {shown})"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["schedule.warmup_epochs=100", "epochs=1"],
            "schedule.warmup_epochs=100 is longer than the run (1 epoch): lower it or raise epochs",
        ),
        (
            ["schedule.warmup_epochs=2.5", "epochs=2"],
            "schedule.warmup_epochs=2.5 is longer than the run (2 epochs): lower it or raise epochs",
        ),
        (
            ["schedule.warmup_steps=500", "steps=400"],
            "schedule.warmup_steps=500 is longer than the run (steps=400): lower it or raise steps",
        ),
    ],
)
def test_a_warm_up_longer_than_the_run_is_refused_before_any_data_is_read(overrides, message):
    from resnet_train import config

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        config.validate(compose(*overrides))


def test_a_warm_up_in_other_units_than_the_run_is_checked_once_the_epoch_size_is_known():
    from resnet_train import config

    cfg = compose("schedule.warmup_steps=400", "epochs=1")
    config.validate(cfg)  # steps against epochs: unknown before the data is read
    assert schedules.run_length(cfg, 400) == (1, 400)  # as long as the run: allowed
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "schedule.warmup_steps=400 is longer than the run (1 epoch = 390 steps): lower it or raise epochs"
        ),
    ):
        schedules.run_length(cfg, 390)
    cfg = compose("schedule.warmup_epochs=2", "steps=500")
    config.validate(cfg)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "schedule.warmup_epochs=2 (780 steps) is longer than the run (steps=500): lower it or raise steps"
        ),
    ):
        schedules.run_length(cfg, 390)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "step", "milestones": [91, 136]}, "fractions of training"),
        ({"name": "step", "milestones": [60, 30], "milestones_unit": "epoch"}, "increasing positive epochs"),
        ({"name": "step", "milestones": [0.5], "milestones_unit": "weeks"}, "milestones_unit must be one of"),
        ({"name": "step", "factor": 2}, "schedule.factor"),
        ({"name": "cosine", "floor": 1.5}, "schedule.floor"),
        ({"name": "onecycle", "anneal": "cosine"}, "schedule.anneal must be one of cos, linear"),
        ({"name": "onecycle", "pct_start": 1.0}, "schedule.pct_start"),
        ({"name": "exponential", "decay_rate": 0}, "schedule.decay_rate"),
        ({"name": "constant", "warmup_epochs": -1}, "schedule.warmup_epochs"),
        ({"name": "constant", "warmup_steps": 1.5}, r"schedule.warmup_steps must be an integer \(got 1.5\)"),
        ({"name": "constant", "warmup_steps": -1}, "schedule.warmup_steps must be an integer >= 0"),
        (
            {"name": "constant", "warmup_epochs": 1, "warmup_steps": 400},
            "schedule.warmup_epochs=1 and schedule.warmup_steps=400 both set the warm-up",
        ),
        ({"name": "constant", "warmup_mode": "exp"}, "schedule.warmup_mode must be one of linear, gradual, constant"),
        (
            {"name": "constant", "warmup_steps": 4, "warmup_mode": "constant", "warmup_factor": 0},
            "schedule.warmup_factor",
        ),
        ({"name": "nope"}, "schedule.name must be one of"),
    ],
)
def test_bad_schedules_are_config_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        schedules.lr_schedule(cfg, 0.1, 100, 10)


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle", "exponential", "constant"])
def test_every_schedule_config_composes_and_builds(name):
    cfg = compose(f"schedule={name}", "schedule.warmup_epochs=1")
    s = schedules.lr_schedule(cfg.schedule, 0.1, 300, 10)
    lrs = schedules.curve(s, 300)
    assert lrs.shape == (300,) and np.all(lrs >= 0) and lrs.max() <= 0.1 + 1e-7
    assert lrs[0] < lrs[10]  # the warm-up ramps (onecycle ramps anyway)


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "onecycle", "warmup_epochs": 1},
        {"name": "step", "milestones": [0.3, 0.6], "warmup_epochs": 0.5},
        {
            "name": "step",
            "milestones": [20, 25],
            "milestones_unit": "step",
            "factor": 0.5,
            "warmup_steps": 15,
            "warmup_mode": "constant",
            "warmup_factor": 0.1,
        },
    ],
)
def test_a_resumed_optimizer_continues_the_exact_lr_curve(tmp_path, schedule):
    """Stop after 13 steps (mid-epoch), checkpoint, restore into a fresh optimizer: the next
    steps' lr are the uninterrupted run's."""

    def fresh():
        variable = keras.Variable(np.ones((3, 2), "float32"))
        opt = optim.build_optimizer({"name": "sgd", "momentum": 0.9}, schedules.lr_schedule(schedule, 0.1, 40, 10))
        opt.build([variable])
        return variable, opt

    def steps(variable, opt, n):
        lrs = []
        for _ in range(n):
            lrs.append(float(opt.learning_rate.numpy()))
            opt.apply_gradients([(tf.ones((3, 2)), variable)])
        return lrs

    variable, opt = fresh()
    straight = steps(variable, opt, 30)
    variable, opt = fresh()
    steps(variable, opt, 13)
    path = tf.train.Checkpoint(optimizer=opt, variable=variable).save(str(tmp_path / "ckpt"))
    variable, opt = fresh()
    tf.train.Checkpoint(optimizer=opt, variable=variable).restore(path).assert_consumed()
    assert int(opt.iterations.numpy()) == 13
    assert steps(variable, opt, 17) == pytest.approx(straight[13:], rel=1e-6)
    assert len(set(np.round(straight, 8))) > 3  # the curve really moves over these steps


def test_plot_schedule_draws_the_runs_curve(tmp_path):
    from resnet_train.config import load_config
    from resnet_train.tools.schedule_plot import plot_schedule

    cfg = load_config(
        ["schedule=onecycle", "epochs=4", "batch_size=32", "train_size=640", f"out={tmp_path / 'lr.png'}"],
        config_name="plot_schedule",
    )
    path, lrs = plot_schedule(cfg)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(lrs) == 4 * 20  # 640 // 32 steps per epoch
    peak = 0.1 * 32 / 64  # optimizer.lr per 64 images (digits' reference batch) at batch 32
    assert lrs.max() == pytest.approx(peak) and int(lrs.argmax()) == 23  # 0.3 x 80 - 1
    expected = schedules.curve(schedules.OneCycle(peak, 80), 80)
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_plot_schedule_script_reads_the_embedded_datasets_size_and_refuses_bad_values(tmp_path, monkeypatch, cli):
    script = "resnet-plot-schedule"
    monkeypatch.chdir(tmp_path)
    done = cli("schedule=cosine", "epochs=2", f"out={tmp_path / 'cos.png'}", entry=script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cos.png").exists() and "peak 0.1" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cos.png"]  # no log file, no run directory
    done = cli("schedule=onecycle", "schedule.anneal=cosine", "train_size=100", entry=script)
    assert done.returncode == 2 and "schedule.anneal must be one of cos, linear" in done.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("schedule.anneal=triangle", "schedule.anneal"),
        ("optimizer.clip_norm=-1", "optimizer.clip_norm"),
        ("optimizer.weight_decay_mode=sometimes", "optimizer.weight_decay_mode"),
        ("ema.decay=1.5", "ema.decay"),
        ("schedule.warmup_epochs=100", "schedule.warmup_epochs=100 is longer than the run"),
    ],
)
def test_bad_optimizer_and_schedule_settings_fail_before_any_data_is_read(tmp_path, monkeypatch, override, message):
    from resnet_train import data as data_lib
    from resnet_train.training.loop import train_and_evaluate

    monkeypatch.setattr(data_lib, "load", lambda cfg: pytest.fail("the data was read"))
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(compose("schedule=onecycle", override), tmp_path)


def test_a_head_lr_multiplier_with_an_adaptive_optimizer_is_refused():
    with pytest.raises(ConfigError, match="finetune.head_lr_mult=10.0 works with optimizer=sgd only"):
        optim.check(compose("optimizer=adamw", "finetune.head_lr_mult=10.0"))
    optim.check(compose("optimizer=sgd", "finetune.head_lr_mult=10.0"))
