"""Nothing is lost on any rerun (issue 14): a refused run stays refused, storage errors move
nothing, metrics stay whole, best/ matches the metrics, old checkpoints are cleaned up after a
fallback, the precision a run started with is kept, workers agree exactly, the index cannot point
outside the run, and what must survive a power loss is flushed."""

import json
import os
import re
import shutil
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, cli_in_process, compose, file_digests

from resnet_train.errors import RunDirError
from resnet_train.report.metrics import Reporter, write_atomic
from resnet_train.runtime import devices as runtime
from resnet_train.training import checkpoint as checkpoint_lib
from resnet_train.training.loop import train_and_evaluate
from resnet_train.training.setup import check_steps_agree

WITH_VAL = (*TINY, "epochs=1", "data.val_split=32")  # a validation split: best/ is kept
NO_READABLE = r"no readable checkpoint in .* though this run has made progress: start a new run directory"


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def trained_copy(trained, tmp_path):
    """trained_copy(*overrides, name="run") -> (this test's own copy of the run, at tmp_path / name;
    the results of training it): conftest's `trained`, each distinct run trained once per module."""

    def copy(*overrides, name="run"):
        return tmp_path / name, trained(tmp_path / name, *overrides)

    return copy


def test_after_no_readable_checkpoint_every_rerun_is_refused_alike_and_nothing_is_lost(trained_copy):
    run, _ = trained_copy(*WITH_VAL)
    (run / "results.json").unlink()
    data = next(run.glob("checkpoints/ckpt-3.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(RunDirError, match=NO_READABLE) as first:
        train_and_evaluate(compose(*WITH_VAL), run)
    kept = file_digests(run)
    assert any("best/ckpt-3" in k for k in kept) and any(k.startswith("checkpoints/corrupt/") for k in kept)
    # Up-arrow and Enter, or a requeue loop: the same refusal, nothing rewritten.
    for _ in range(2):
        with pytest.raises(RunDirError, match=NO_READABLE) as again:
            train_and_evaluate(compose(*WITH_VAL), run)
        assert str(again.value) == str(first.value)
        assert file_digests(run) == kept  # metrics.jsonl and best/ included
    with pytest.raises(RunDirError, match=r"holds a run with another config \(optimizer.lr: 0.1 -> 0.5\)"):
        train_and_evaluate(compose(*WITH_VAL, "optimizer.lr=0.5"), run)  # still checked against the run's config
    assert file_digests(run) == kept
    # Only metrics left (the checkpoints deleted by hand): still a run with progress, not a new one.
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(RunDirError, match=NO_READABLE):
        train_and_evaluate(compose(*WITH_VAL), run)
    assert (run / "metrics.jsonl").read_text() and len(records(run)) == 3


@pytest.mark.parametrize(
    "error",
    [
        tf.errors.PermissionDeniedError(None, None, "/run/checkpoints/ckpt-3.index; Permission denied"),
        tf.errors.UnknownError(None, None, "/run/checkpoints/ckpt-3.data-00000-of-00001; Input/output error"),
        tf.errors.AbortedError(None, None, "/run/checkpoints/ckpt-3.index; Stale file handle"),
        tf.errors.ResourceExhaustedError(None, None, "out of memory"),
        OSError(5, "Input/output error"),
    ],
    ids=["EACCES", "EIO", "ESTALE", "ResourceExhausted", "OSError-EIO"],
)
def test_a_storage_error_while_reading_a_checkpoint_refuses_and_moves_nothing(trained_copy, monkeypatch, error):
    run, _ = trained_copy(*TINY, "epochs=1")
    (run / "results.json").unlink()
    before = file_digests(run)

    def unreachable(path):
        raise error

    monkeypatch.setattr(checkpoint_lib.tf.train, "load_checkpoint", unreachable)
    with pytest.raises(
        RunDirError,
        match=r"could not read the checkpoint .*ckpt-4 .*a permission or storage error, "
        r"not damage, so nothing was moved",
    ):
        train_and_evaluate(compose(*TINY, "epochs=1"), run)
    assert file_digests(run) == before and not (run / "checkpoints" / "corrupt").exists()


def test_a_line_cut_short_is_dropped_before_the_next_record_is_appended(tmp_path):
    whole = [
        {"split": "train", "step": 4, "epoch": 1, "loss": 1.0},
        {"split": "eval", "step": 4, "epoch": 1, "accuracy": 0.5},
    ]
    text = "".join(json.dumps(r) + "\n" for r in whole)
    (tmp_path / "metrics.jsonl").write_text(text + '{"split": "train", "step": 8, "ep')  # the disk was full
    reporter = Reporter(tmp_path, resumed_at=100)
    reporter.log("train", 8, 2, {"loss": 0.5})
    reporter.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4, 4, 8]  # every line parses; the new record kept


def test_a_finished_run_rerun_with_another_runtime_setting_logs_its_test_record_once(trained_copy):
    run, first = trained_copy(*WITH_VAL)
    again = train_and_evaluate(compose(*WITH_VAL, "runtime.steps_per_call=2"), run)  # allowed; not skipped
    assert [r["split"] for r in records(run)] == ["train", "eval", "test"]
    assert again["test"] == first["test"] and again["steps"] == first["steps"]


def test_a_moved_run_directory_is_still_recognised_as_finished(trained_copy, tmp_path):
    trained_copy(*TINY, "epochs=1", name="before")
    shutil.move(tmp_path / "before", tmp_path / "after")
    run = tmp_path / "after"
    kept = file_digests(run)
    results = train_and_evaluate(compose(*TINY, "epochs=1"), run)
    assert results == json.loads((run / "results.json").read_text())  # the saved results, not a new evaluation
    assert file_digests(run) == kept


def test_a_best_checkpoint_later_than_the_resumed_step_is_set_aside(tmp_path):
    """A kill between save_best and save of epoch 2: best/ holds step 8, the newest checkpoint step 4."""
    run = tmp_path / "run"
    overrides = (*TINY, "epochs=2", "data.val_split=32", "runtime.deterministic=true")
    train_and_evaluate(compose(*overrides), run)
    ckpts = run / "checkpoints"
    shutil.rmtree(ckpts / "best")
    (ckpts / "best").mkdir()
    for f in ckpts.glob("ckpt-6.*"):  # 96 training images, batch 32: 3 steps an epoch
        shutil.copy(f, ckpts / "best" / f.name)
        f.unlink()
    (ckpts / "best" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-6"\nall_model_checkpoint_paths: "ckpt-6"\n'
    )
    (ckpts / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n')
    (run / "results.json").unlink()
    aside = file_digests(ckpts / "best")

    train_and_evaluate(compose(*overrides), run)
    assert file_digests(ckpts / "superseded" / "best-ckpt-6") == aside  # moved, not deleted
    assert (ckpts / "best" / "ckpt-6.index").exists() or (ckpts / "best" / "ckpt-3.index").exists()
    best_step = int(tf.train.latest_checkpoint(str(ckpts / "best")).rsplit("-", 1)[-1])
    evals = {r["step"]: r["accuracy"] for r in records(run) if r["split"] == "eval"}
    assert evals[best_step] == max(evals.values())  # best/ is the best epoch the metrics hold


def test_after_a_fallback_old_checkpoints_are_cleaned_up_again(tmp_path):
    run = tmp_path / "run"
    overrides = (*TINY, "checkpoint.keep=2")  # 4 steps an epoch
    train_and_evaluate(compose(*overrides, "epochs=3"), run)  # ckpt-8, ckpt-12 kept
    (run / "results.json").unlink()
    data = next(run.glob("checkpoints/ckpt-12.data-*"))
    data.write_bytes(data.read_bytes()[:100])  # damaged: the run falls back to ckpt-8
    train_and_evaluate(compose(*overrides, "epochs=5"), run)
    on_disk = sorted(int(f.stem.split("-")[1]) for f in (run / "checkpoints").glob("ckpt-*.index"))
    assert on_disk == [16, 20]
    state = tf.train.get_checkpoint_state(str(run / "checkpoints"))
    assert [p.rsplit("/", 1)[-1] for p in state.all_model_checkpoint_paths] == ["ckpt-16", "ckpt-20"]


def test_an_empty_checkpoint_index_is_rebuilt_from_the_files(tmp_path):
    run = tmp_path / "run"
    overrides = (*TINY, "checkpoint.keep=2")
    train_and_evaluate(compose(*overrides, "epochs=2"), run)
    (run / "results.json").unlink()
    (run / "checkpoints" / "checkpoint").write_bytes(b"")  # a power loss while TF rewrote it
    results = train_and_evaluate(compose(*overrides, "epochs=3"), run)
    assert results["steps"] == 12 and results["checkpoint"].endswith("ckpt-12")
    assert sorted(f.name for f in (run / "checkpoints").glob("ckpt-*.index")) == ["ckpt-12.index", "ckpt-8.index"]


@pytest.fixture
def auto_chooses(monkeypatch):
    def choose(policy):
        monkeypatch.setattr(runtime, "auto_precision", lambda: (policy, "this test's host"))

    return choose


def test_precision_auto_keeps_the_policy_the_run_started_with(tmp_path, auto_chooses):
    run = tmp_path / "run"
    auto_chooses("mixed_bfloat16")  # an AMX Xeon started the run ...
    first = train_and_evaluate(compose(*TINY, "epochs=1", "runtime.precision=auto"), run)
    assert first["precision"] == "mixed_bfloat16"
    auto_chooses("float32")  # ... an AVX2-only host continues it
    resumed = train_and_evaluate(compose(*TINY, "epochs=2", "runtime.precision=auto"), run)
    assert resumed["precision"] == "mixed_bfloat16"


def test_a_float16_run_continues_under_auto_and_refuses_another_policy_with_a_true_line(tmp_path, auto_chooses):
    run = tmp_path / "run"
    auto_chooses("mixed_float16")  # a GPU started the run ...
    train_and_evaluate(compose(*TINY, "epochs=1", "runtime.precision=auto"), run)
    before = file_digests(run)
    with pytest.raises(
        RunDirError,
        match=r"was trained with runtime.precision=mixed_float16; float32 cannot continue "
        r"its checkpoints \(float16 keeps a loss scale in the optimizer state\): "
        r"rerun with runtime.precision=mixed_float16 or auto",
    ):
        train_and_evaluate(compose(*TINY, "epochs=2", "runtime.precision=float32"), run)
    assert file_digests(run) == before
    auto_chooses("float32")  # ... a CPU continues it, with float16 as it started
    assert train_and_evaluate(compose(*TINY, "epochs=2", "runtime.precision=auto"), run)["precision"] == "mixed_float16"


def test_workers_agree_only_when_every_step_is_equal():
    # The two logical CPUs (conftest), reduced on the host as runtime.cpu_replicas does: a gather
    # without collectives. A collective gather (MirroredStrategy's default) would need a process of
    # its own: TF numbers collectives per process from 1 for every new strategy, so it would collide
    # with a collective an earlier test in this process ran.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )

    def replica_step(values):
        ids = tf.constant(values, tf.int64)
        return lambda: tf.reshape(ids[tf.distribute.get_replica_context().replica_id_in_sync_group], [1])

    check_steps_agree(strategy, replica_step([8, 8]), 8, "run")  # equal steps agree
    with pytest.raises(RunDirError) as refused:
        check_steps_agree(strategy, replica_step([4, 8]), 6, "run")
    # This worker's step (6) is the others' mean: a sum (6 x 2 = 4 + 8) would have passed it.
    assert str(refused.value).startswith(
        "the workers restored different checkpoints (steps [4, 8]; this one: step 6 from run)"
    )


def test_an_index_naming_checkpoints_outside_the_run_is_not_followed(trained_copy, tmp_path):
    run, _ = trained_copy(*TINY, "epochs=1")
    other = tmp_path / "other"
    train_and_evaluate(compose(*TINY, "epochs=1", "seed=1"), other)
    (run / "results.json").unlink()
    for f in other.glob("checkpoints/ckpt-4.*"):  # another run's checkpoint, damaged, at a later step
        f.rename(f.with_name(f.name.replace("ckpt-4", "ckpt-50")))
    victim = next(other.glob("checkpoints/ckpt-50.data-*"))
    victim.write_bytes(victim.read_bytes()[:100])
    theirs = file_digests(other)
    (run / "checkpoints" / "checkpoint").write_text(  # a copied or crafted index
        'model_checkpoint_path: "../../other/checkpoints/ckpt-50"\n'
        'all_model_checkpoint_paths: "ckpt-4"\nall_model_checkpoint_paths: "../../other/checkpoints/ckpt-50"\n'
    )
    results = train_and_evaluate(compose(*TINY, "epochs=2"), run)
    assert results["steps"] == 8 and file_digests(other) == theirs
    assert not (run / "checkpoints" / "corrupt").exists()


def test_what_must_survive_a_power_loss_is_flushed(tmp_path, monkeypatch):
    flushed = []
    real = os.fsync

    def record(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    write_atomic(tmp_path / "results.json", "{}")
    tmp, directory = flushed  # the file before its rename, then the directory that holds the rename
    assert tmp.startswith(str(tmp_path / "results.json.")) and tmp.endswith(".tmp") and directory == str(tmp_path)
    flushed.clear()
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    saver = checkpoint_lib.Checkpointer(tmp_path / "ck", model, tf.keras.optimizers.SGD())
    path = saver.save(3, 1)
    assert {path + ".index", str(tmp_path / "ck" / "checkpoint"), str(tmp_path / "ck")} <= set(flushed)
    # Each metrics.jsonl record, as it is appended (the fault table's "each metrics line").
    from resnet_train.report.metrics import Reporter

    (tmp_path / "run").mkdir()
    reporter = Reporter(tmp_path / "run", tensorboard=False)
    for step in (1, 2):
        flushed.clear()
        reporter.log("eval", step, step, {"accuracy": 0.5})
        assert flushed == [str(tmp_path / "run" / "metrics.jsonl")]
    reporter.close()


@pytest.mark.parametrize(
    "written, why",
    [
        (b"", r"empty"),  # a power loss while it was written
        (b"depth: 8\noptimizer: {name: sgd\n  lr: [0.1", r"ParserError: "),  # cut short mid-write
        (b"- just\n- a list\n", r"a ListConfig, not a mapping"),  # not a mapping at all
    ],
)
def test_an_empty_or_unparsable_saved_config_is_damage_not_no_constraints(trained_copy, written, why):
    run, _ = trained_copy(*TINY, "epochs=1")
    (run / "checkpoints" / "config.yaml").write_bytes(written)
    before = file_digests(run)
    with pytest.raises(
        RunDirError,
        match=r"config.yaml \(" + why + r".*\) is damaged, so it cannot tell which config made "
        r"the run's checkpoints",
    ):
        train_and_evaluate(compose(*TINY, "epochs=2", "optimizer.lr=0.5"), run)
    assert file_digests(run) == before


def test_a_folder_dataset_that_moved_is_resumed_and_another_one_refused(tmp_path):
    from test_folder import write_images

    photos = tmp_path / "photos"
    write_images(photos / "red", 12, (220, 30, 30))
    write_images(photos / "blue", 12, (30, 30, 220), seed=1)
    args = ("data=folder", "depth=8", "batch_size=8", "data.image_size=16")
    run = tmp_path / "run"
    train_and_evaluate(compose(*args, f"data.path={photos}", "epochs=1"), run)
    shutil.move(photos, tmp_path / "moved")
    results = train_and_evaluate(compose(*args, f"data.path={tmp_path / 'moved'}", "epochs=2"), run)
    assert results["epochs"] == 2 and [r["epoch"] for r in records(run) if r["split"] == "train"] == [1, 2]
    write_images(tmp_path / "moved" / "blue", 13, (30, 30, 220), seed=1)  # one image more: another dataset
    (run / "results.json").unlink()
    with pytest.raises(RunDirError, match=r"the data found now is not the dataset .* \((train|test)_size: \d+ -> \d+"):
        train_and_evaluate(compose(*args, f"data.path={tmp_path / 'moved'}", "epochs=3"), run)
    assert np.isfinite(results["test"]["loss"])


def test_a_run_whose_lock_is_taken_over_stops_and_writes_nothing_more_into_the_run(tmp_path, monkeypatch):
    from resnet_train.training import run_lock
    from resnet_train.training.interrupts import StopRequests

    run = tmp_path / "run"
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    noticed = threading.Event()
    request = StopRequests.request
    monkeypatch.setattr(StopRequests, "request", lambda self, reason: (request(self, reason), noticed.set()))
    save, kept = checkpoint_lib.Checkpointer.save, {}

    def save_then_lose_the_lock(self, step, epoch):  # after epoch 1: another process takes the lock over
        path = save(self, step, epoch)
        if not kept:
            (run / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 4242, "token": "theirs"}))
            assert noticed.wait(30), "the heartbeat never noticed"
            kept.update({k: v for k, v in file_digests(run).items() if k.startswith(("checkpoints/", "metrics"))})
        return path

    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", save_then_lose_the_lock)
    with pytest.raises(
        RunDirError,
        match=rf"^the lock {run / '.lock'} was taken over by process 4242 on elsewhere, "
        rf"which judged this run stale: stopping so that two runs do not write into "
        rf"{run} \(at step (\d+)\); nothing more was written into its checkpoints or "
        rf"metrics: this run's state at step \1 is in (\S+) \(init_from= it",
    ) as lost:
        train_and_evaluate(compose(*TINY, "epochs=3"), run)
    assert {k: v for k, v in file_digests(run).items() if k.startswith(("checkpoints/", "metrics"))} == kept
    assert json.loads((run / ".lock").read_text())["token"] == "theirs"  # the new owner's lock stays
    step, aside = re.search(r"at step (\d+)\); .* is in (\S+) \(init_from", str(lost.value)).groups()
    step = int(step)
    assert step > 4 and aside.startswith(str(run / "lock_lost")) and aside.endswith(f"ckpt-{step}")
    assert checkpoint_lib.readable(aside) is None
    assert tf.train.load_checkpoint(aside).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == step


def test_a_signal_during_set_up_stops_at_once_and_moves_nothing(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = (*TINY, "epochs=1", f"hydra.run.dir={run}")
    assert cli_in_process(monkeypatch, capsys, "resnet-train", *args)[0] == 0
    (run / "results.json").unlink()
    before = file_digests(run)
    load, waited_out = tf.train.load_checkpoint, []

    def terminated_while_reading(path):  # e.g. a long restore from a network file system
        os.kill(os.getpid(), signal.SIGTERM)  # handled before os.kill returns: the rest never runs
        waited_out.append(path)
        return load(path)

    monkeypatch.setattr(tf.train, "load_checkpoint", terminated_while_reading)
    code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", *args[:-2], "epochs=2", args[-1])
    assert waited_out == []  # stopped at once, not after the restore
    assert code == 75 and err.strip().endswith(
        "stopped by SIGTERM during set-up, before training went on: no step "
        "was lost; run the same command again to continue"
    ), err[-2000:]
    # Raised inside the damage check of the checkpoint (an `except Exception`): not taken for damage.
    assert file_digests(run) == before and not (run / "checkpoints" / "corrupt").exists()
    monkeypatch.setattr(tf.train, "load_checkpoint", load)
    assert cli_in_process(monkeypatch, capsys, "resnet-train", *args[:-2], "epochs=2", args[-1])[0] == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 8
