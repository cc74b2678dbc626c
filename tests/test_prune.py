"""Magnitude pruning (prune.*): the schedule's sparsity at its boundaries, pruned weights held at
zero through momentum and weight decay, an exact resume, layer vs global scope, two replicas with
gradient accumulation, the zeros in the exported files, resnet-eval's report. The schedule is
computed here from Zhu & Gupta's formula, not by resnet_train.training.prune."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, StepStop, cli_in_process, compose, train_small_model

from resnet_train.errors import Preempted
from resnet_train.runtime import devices as runtime
from resnet_train.training import prune
from resnet_train.training.loop import train_and_evaluate
from resnet_train.training.trainer import Trainer

TRAINER_INIT = Trainer.__init__

FINAL = 0.75
# 4 epochs of 4 steps, fine-tuned from a 1-epoch run; pruning from epoch 1 to epoch 3 (steps 4 to
# 12), masks rebuilt every 3 steps (4, 7, 10) and at the end (12); SGD with momentum 0.9 and
# coupled weight decay; every epoch's checkpoint kept.
PRUNED = (
    *TINY,
    "epochs=4",
    "runtime.deterministic=true",
    "optimizer.weight_decay=5e-4",
    f"prune.sparsity={FINAL}",
    "prune.unit=epoch",
    "prune.start=1",
    "prune.end=3",
    "prune.frequency=3",
    "checkpoint.keep=5",
)
START, END, FREQUENCY = 4, 12, 3


def schedule(step, final=FINAL, start=START, end=END):
    """Zhu & Gupta's s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3 with s_i = 0, held outside [t0, t0 + n dt]."""
    t = min(max(step, start), end)
    return final + (0.0 - final) * (1.0 - (t - start) / (end - start)) ** 3


def last_update(step, start=START, end=END, frequency=FREQUENCY):
    """The latest step <= `step` at which the masks were rebuilt (None: not yet)."""
    updates = [t for t in range(start, end + 1) if (t - start) % frequency == 0 or t == end]
    done = [t for t in updates if t <= step]
    return done[-1] if done else None


def expected_zeros(size, step, final=FINAL, start=START, end=END, frequency=FREQUENCY):
    at = last_update(step, start, end, frequency)
    return 0 if at is None else int(np.round(schedule(at, final, start, end) * size))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The usual workflow: a finished run, then `init_from=RUN prune.sparsity=...` fine-tuning it."""
    root = tmp_path_factory.mktemp("prune")
    train_and_evaluate(compose(*TINY, "epochs=1"), root / "source")
    results = train_and_evaluate(compose(*PRUNED, f"init_from={root / 'source'}"), root / "pruned")
    return root, results


def masks_of(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    prefix = "prune/masks/"
    return {
        key[len(prefix) :].split("/")[0]: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(prefix)
    }


def test_sparsity_at_each_schedule_boundary_is_the_schedules(runs):
    root, results = runs
    run = root / "pruned"
    assert json.loads((run / "init_from.json").read_text())["loaded"]  # fine-tuned from the source run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reported = {r["step"]: r["sparsity"] for r in records if r["split"] == "train"}
    assert sorted(reported) == [4, 8, 12, 16]
    for step in (4, 8, 12, 16):  # epoch ends: the start (0%), between updates, the end, after it
        masks = masks_of(str(run / "checkpoints" / f"ckpt-{step}"))
        assert set(masks) == {"stage1_block1_conv1", "stage1_block1_conv2", "stage2_block1_conv1",
                              "stage2_block1_conv2", "stage3_block1_conv1", "stage3_block1_conv2"}  # fmt: skip
        for name, mask in masks.items():
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert int(np.sum(mask == 0)) == expected_zeros(mask.size, step), (name, step)
        counts = [expected_zeros(m.size, step) for m in masks.values()]
        assert reported[step] == sum(counts) / sum(m.size for m in masks.values())
    assert reported[4] == 0.0 and 0.0 < reported[8] < reported[12] == reported[16]
    assert reported[12] == pytest.approx(FINAL, abs=1e-4) and results["sparsity"] == reported[16]


def test_pruned_weights_stay_exactly_zero_through_momentum_and_weight_decay(monkeypatch):
    """Pruned at step 1 of 4 under SGD momentum 0.9 and coupled weight decay: the momentum of
    the pruned weights is not zero (unmasked, they would move again), and they stay exactly 0."""
    pruners = []
    with_pruner(monkeypatch, pruners, start=0, end=1, frequency=1, final=0.5)
    optimizers = []

    def sgd():
        optimizers.append(keras.optimizers.SGD(0.5, momentum=0.9))
        return optimizers[-1]

    weights, _ = train_small_model(runtime.make_strategy("one_device"), 4, 16, optimizer=sgd, weight_decay=1e-2)
    (pruner,), (opt,) = pruners, optimizers
    assert int(pruner.state.step.numpy()) == 4
    for kernel, mask in zip(pruner.kernels, pruner.masks):
        mask = mask.numpy()
        assert int(np.sum(mask == 0)) == int(np.round(0.5 * mask.size))
        np.testing.assert_array_equal(kernel.numpy()[mask == 0], 0.0)
        assert np.all(kernel.numpy()[mask == 1] != 0.0)
        momentum = opt.momentums[opt._get_variable_index(kernel)].numpy()
        assert np.all(momentum[mask == 0] != 0.0)  # what the mask holds back after every step
    assert [w for w in weights if w.ndim > 1][0][..., 0].size  # the kernels trained are these


def with_pruner(monkeypatch, pruners, strategy=None, scope="layer", **window):
    """Every Trainer made from now on in the test gets a Pruner over its model's kernels (none excluded)."""
    init = TRAINER_INIT

    def init_with_pruner(self, model, optimizer, strategy, *args, **kwargs):
        p = prune.Pruner(model, strategy, window["final"], window["start"], window["end"], window["frequency"], scope)
        pruners.append(p)
        init(self, model, optimizer, strategy, *args, pruner=p, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", init_with_pruner)


def test_the_masks_follow_the_schedule_at_every_step_a_window_frequency_does_not_divide():
    """Every step of a 2..9 window rebuilt every 3 steps (2, 5, 8, and the end, 9) with the kernels
    moving in between: each mask holds the schedule's count of zeros, on the smallest magnitudes
    of the kernel as that step left it, and changes only at the update steps."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(7, 3), keras.layers.Flatten(),
                              keras.layers.Dense(5)])  # fmt: skip
    pruner = prune.Pruner(model, tf.distribute.get_strategy(), 0.6, 2, 9, 3, "layer")
    kernels = [layer.kernel for layer in prune.prunable(model)]
    noise = tf.random.Generator.from_seed(1)
    move = tf.function(lambda: [k.assign_add(noise.normal(k.shape, stddev=0.05)) for k in kernels])
    after_step = tf.function(pruner.after_step)
    updates = []
    for t in range(1, 13):
        masks_before = [m.numpy() for m in pruner.masks]
        move()  # the optimizer step
        moved = [np.abs(k.numpy()) for k in kernels]
        after_step()
        for kernel, mask, magnitudes, old_mask in zip(kernels, pruner.masks, moved, masks_before):
            mask = mask.numpy()
            assert int(np.sum(mask == 0)) == expected_zeros(mask.size, t, final=0.6, start=2, end=9, frequency=3), t
            assert np.all(mask[old_mask == 0] == 0)  # a pruned weight stays pruned
            if not np.array_equal(mask, old_mask):  # the smallest magnitudes, the pruned ones as 0
                updates.append(t)
                ranked = magnitudes * old_mask
                assert ranked[mask == 0].max() <= ranked[mask == 1].min()
            np.testing.assert_array_equal(kernel.numpy()[mask == 0], 0.0)
            np.testing.assert_array_equal(
                kernel.numpy()[mask == 1], np.sign(kernel.numpy()[mask == 1]) * magnitudes[mask == 1]
            )
    assert sorted(set(updates)) == [5, 8, 9]  # (at 2 the schedule is 0: nothing to prune yet)


def test_global_scope_ranks_all_kernels_together_layer_scope_each_alone():
    """Two kernels, one with 10x larger weights: at 50%, layer scope halves each; global scope
    takes the zeros from the small one, by one magnitude threshold over both."""
    keras.utils.set_random_seed(0)
    counts = {}
    for scope in ("layer", "global"):
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(40, name="big"), keras.layers.Dense(30, name="small")]
        )
        model.get_layer("big").kernel.assign(np.random.default_rng(0).normal(0, 1.0, (4, 40)))
        model.get_layer("small").kernel.assign(np.random.default_rng(1).normal(0, 0.1, (40, 30)))
        magnitudes = {layer.name: np.abs(layer.kernel.numpy()) for layer in model.layers}
        pruner = prune.Pruner(model, tf.distribute.get_strategy(), 0.5, 0, 1, 1, scope)
        tf.function(pruner.after_step)()
        masks = dict(zip(pruner.names, (m.numpy() for m in pruner.masks)))
        counts[scope] = {name: int(np.sum(m == 0)) for name, m in masks.items()}
        if scope == "global":
            pruned = np.concatenate([magnitudes[n][masks[n] == 0] for n in masks])
            kept = np.concatenate([magnitudes[n][masks[n] == 1] for n in masks])
            assert pruned.max() <= kept.min()
    assert counts["layer"] == {"big": 80, "small": 600}
    assert sum(counts["global"].values()) == round(0.5 * (160 + 1200))
    assert counts["global"]["big"] < 10 < counts["global"]["small"]


def test_two_replicas_with_accumulation_prune_as_one_device(monkeypatch):
    """MirroredStrategy over 2 logical CPUs, 2 micro-batches of 16 per step: the masks and weights
    of one device with batch 32, and every replica's copy of a kernel holds the zeros."""
    results = {}
    for name, make, batch, accumulate in (
        ("one", lambda: runtime.make_strategy("one_device"), 32, 1),
        ("two", lambda: runtime.make_strategy("mirrored", cpu_replicas=2), 16, 2),
    ):
        pruners = []
        with_pruner(monkeypatch, pruners, start=0, end=2, frequency=1, final=0.5)
        strategy = make()
        weights, _ = train_small_model(strategy, 2, batch, weight_decay=1e-2, accumulate_steps=accumulate)
        results[name] = weights, [m.numpy() for m in pruners[0].masks]
        if name == "two":
            assert strategy.num_replicas_in_sync == 2
            for kernel, mask in zip(pruners[0].kernels, pruners[0].masks):
                copies, mask_copies = kernel.values, mask.values
                assert len(copies) == 2 and {c.device for c in copies} != {copies[0].device}
                for copy, mask_copy in zip(copies, mask_copies):
                    np.testing.assert_array_equal(mask_copy.numpy(), mask.numpy())
                    np.testing.assert_array_equal(copy.numpy()[mask.numpy() == 0], 0.0)
    for a, b in zip(results["one"][1], results["two"][1]):
        np.testing.assert_array_equal(a, b)
        assert 0 < np.sum(a == 0) < a.size
    for a, b in zip(results["one"][0], results["two"][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_pruned_run_stopped_mid_window_resumes_bit_for_bit(runs, tmp_path, monkeypatch):
    """Stopped after step 9 (between the mask updates of steps 7 and 10), resumed: the masks, the
    weights, the optimizer, every record and the results are the uninterrupted run's."""
    root, results = runs
    stop = StepStop(monkeypatch, at=8)
    run, overrides = tmp_path / "run", (*PRUNED, f"init_from={root / 'source'}")
    with pytest.raises(Preempted, match="at step 9 of 16"):
        train_and_evaluate(compose(*overrides), run)
    stop.at = None  # no second stop
    resumed = train_and_evaluate(compose(*overrides), run)
    a, b = (tf.train.load_checkpoint(str(d / "checkpoints" / "ckpt-16")) for d in (run, root / "pruned"))
    keys = set(a.get_variable_to_shape_map()) - {
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
        "_CHECKPOINTABLE_OBJECT_GRAPH",
    }
    assert keys == set(b.get_variable_to_shape_map()) - {
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
        "_CHECKPOINTABLE_OBJECT_GRAPH",
    }
    assert len([k for k in keys if k.startswith("prune/masks/")]) == 6
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=key)
    timing = ("time", "images_per_sec", "mfu")
    records = [
        [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (d / "metrics.jsonl").read_text().splitlines()
        ]
        for d in (run, root / "pruned")
    ]
    assert records[0] == records[1]
    assert resumed["test"] == results["test"] and resumed["sparsity"] == results["sparsity"]


def test_the_exported_files_hold_the_zeros(runs):
    from resnet_train.tools.export import export_run
    from resnet_train.training.runs import load_run

    root, _ = runs
    run = root / "pruned"
    model = load_run(run).model
    kernels = {layer.name: layer.kernel.numpy() for layer in prune.prunable(model)}
    assert np.sum(kernels["stage3_block1_conv2"] == 0) == round(FINAL * kernels["stage3_block1_conv2"].size)

    path = export_run(run, fmt="keras", out=root / "export_keras")["path"]
    loaded = keras.saving.load_model(path)
    for layer in prune.prunable(loaded):
        np.testing.assert_array_equal(layer.kernel.numpy(), kernels[layer.name], err_msg=layer.name)

    path = export_run(run, fmt="saved_model", out=root / "export_saved_model")["path"]
    saved = tf.saved_model.load(path)
    by_shape = {}
    for v in saved.variables:
        by_shape.setdefault(tuple(v.shape), []).append(v.numpy())
    for name, kernel in kernels.items():  # the same array, zeros in place, among the file's variables
        assert any(np.array_equal(kernel, v) for v in by_shape[kernel.shape]), name


def test_resnet_eval_reports_the_sparsity_per_layer_and_overall(runs, monkeypatch, capsys):
    from resnet_train.training.runs import load_run

    root, _ = runs
    run = root / "pruned"
    code, out, err = cli_in_process(monkeypatch, capsys, "resnet-eval", f"run={run}")
    assert code == 0, err
    model_kernels = {layer.name: layer.kernel.numpy() for layer in prune.prunable(load_run(run).model)}
    zeros = sum(int(np.sum(k == 0)) for k in model_kernels.values())
    total = sum(k.size for k in model_kernels.values())
    assert f"sparsity: {zeros / total:.1%} of the {total:,} conv and dense kernel weights are zero" in out
    assert "stem_conv 0.0%" in out and "logits 0.0%" in out and "stage2_block1_conv1 75.0%" in out
    report = json.loads((run / "eval" / "test.json").read_text())["sparsity"]
    assert report["overall"] == zeros / total and report["layers"]["stage3_block1_conv2"] == 0.75


@pytest.mark.parametrize(
    "style, stem", [("standard", ["stem_conv"]), ("resnet_d", ["stem_conv1", "stem_conv2", "stem_conv3"])]
)
def test_the_default_exclusions_keep_every_stem_conv_and_the_head_unpruned(style, stem):
    """prune.exclude's default [stem, logits] names the stem's convs by their prefix: the one of a
    standard ImageNet ResNet and the three of ResNet-D's deep stem (a whole-name match refused
    ResNet-D's default run: no layer is called stem_conv there)."""
    from resnet_train import models

    model = models.build(18, 10, (32, 32, 3), variant="imagenet", style=style)
    cfg = compose(*TINY, "prune.sparsity=0.5")
    pruner = prune.from_config(cfg, model, tf.distribute.get_strategy(), total_steps=10, steps_per_epoch=5)
    convs = [layer.name for layer in prune.prunable(model)]
    assert [name for name in convs if name not in pruner.names] == [*stem, "logits"]
    assert pruner.names and all(name.startswith("stage") for name in pruner.names)
    assert prune.excluded("stage1_block1_conv1", ["stage1"]) and not prune.excluded("stage10_block1_conv1", ["stage1"])
