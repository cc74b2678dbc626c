"""early_stop.patience / min_delta: the run stops when the metric that chooses best/ stops improving."""

import json

from helpers import TINY

from resnet_train.training.early_stop import Patience

# min_delta=1: no epoch can improve accuracy by more than 1, so the second epoch is the first stale one.
STOPPING = (*TINY, "epochs=6", "data.val_split=0.25", "early_stop.patience=1", "early_stop.min_delta=1.0")


def test_patience_counts_epochs_without_an_improvement_beyond_min_delta():
    patience = Patience(patience=2, min_delta=0.01)
    assert [patience.update(v) for v in (0.5, 0.505, 0.52, 0.52, 0.529)] == [False, False, False, False, True]
    assert patience.best == 0.52 and patience.stale == 2
    never = Patience(patience=None, min_delta=0.0)
    assert not any(never.update(0.1) for _ in range(50))


def _train_records(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def test_a_run_stops_early_is_saved_like_an_epoch_end_and_a_rerun_does_not_train_on(cli, tmp_path):
    run = tmp_path / "run"
    done = cli(*STOPPING, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    steps_per_epoch = 96 // 32  # 128 images, a quarter held out for validation
    assert results["stopped_early_at_epoch"] == 2 and results["steps"] == 2 * steps_per_epoch
    assert results["checkpoint"].endswith(f"ckpt-{2 * steps_per_epoch}")  # the stop epoch's checkpoint
    assert "Stopping early after epoch 2: accuracy on val" in (run / "train.log").read_text()
    assert len(_train_records(run)) == 2

    from resnet_train.tools import sweep

    assert sweep.member_row(run)["epochs"] == 2  # a sweep's summary shows the epochs it ran

    again = cli(*STOPPING, f"hydra.run.dir={run}")  # finished: skipped
    assert again.returncode == 0 and len(_train_records(run)) == 2
    (run / "results.json").unlink()  # as if killed between the last checkpoint and the results
    again = cli(*STOPPING, f"hydra.run.dir={run}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(_train_records(run)) == 2  # no epoch trained on
    assert json.loads((run / "results.json").read_text())["stopped_early_at_epoch"] == 2


def test_without_patience_the_run_goes_to_its_end(cli, tmp_path):
    run = tmp_path / "run"
    done = cli(*TINY, "epochs=2", "data.val_split=0.25", "early_stop.min_delta=1.0", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["stopped_early_at_epoch"] is None


def test_patience_running_out_in_the_last_epoch_is_no_early_stop_on_a_rerun(cli, tmp_path):
    """Killed between the last checkpoint and results.json, a run whose patience ran out in its
    last epoch ended; the rerun must not report it as stopped early."""
    run = tmp_path / "run"
    last_epoch = (*TINY, "epochs=2", "data.val_split=0.25", "early_stop.patience=1", "early_stop.min_delta=1.0")
    done = cli(*last_epoch, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["stopped_early_at_epoch"] is None
    (run / "results.json").unlink()
    again = cli(*last_epoch, f"hydra.run.dir={run}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["stopped_early_at_epoch"] is None
