"""log.every_steps / every_seconds: per-step TensorBoard points, and lines with an ETA off a terminal."""

import re

import tensorflow as tf
from helpers import TINY

from resnet_train.report.step_log import duration


def _scalars(event_dir, tag):
    """(step, value) of a tag in a TensorBoard event directory, read with TF's own reader."""
    points = []
    for path in tf.io.gfile.glob(f"{event_dir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    points.append((event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(points)


def test_off_a_terminal_a_line_every_n_steps_with_eta_and_tensorboard_points(cli, tmp_path):
    run = tmp_path / "run"  # the cli fixture's stderr is captured: not a terminal, no tqdm bar
    done = cli(*TINY, "epochs=2", "log.every_steps=2", "log.every_seconds=null", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    line = r"epoch (\d)/2  step (\d+)/8  loss [\d.]+  acc [\d.]+  lr [\d.e-]+  \d+ img/s  ETA epoch (\S+), run (\S+)"
    lines = re.findall(line, (run / "train.log").read_text())
    assert [(int(e), int(s)) for e, s, _, _ in lines] == [(1, 2), (1, 4), (2, 6), (2, 8)]
    assert lines[1][2] == "0:00" and re.fullmatch(r"\d+:\d\d", lines[0][3])  # the epoch's end: nothing left
    for tag in ("batch/loss", "batch/lr", "batch/images_per_sec"):
        assert [step for step, _ in _scalars(run / "tensorboard" / "train", tag)] == [2, 4, 6, 8], tag


def test_every_seconds_alone_still_logs(cli, tmp_path):
    run = tmp_path / "run"
    done = cli(*TINY, "epochs=1", "log.every_steps=null", "log.every_seconds=0.000001", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(re.findall(r"step \d+/\d+ .* ETA epoch", (run / "train.log").read_text())) == 4  # every call


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (5, 65, 3600 + 62, float("nan"))] == ["0:05", "1:05", "1:01:02", "?"]


def test_on_a_terminal_the_bar_shows_the_runs_eta(cli, tmp_path, monkeypatch):
    import io

    from tqdm import tqdm

    from resnet_train.training import loop

    shown = io.StringIO()
    monkeypatch.setattr(loop, "progress", lambda total, desc, disable=False: tqdm(total=total, desc=desc, file=shown))
    done = cli(*TINY, "epochs=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"run_eta=(\?|\d+:\d\d)", shown.getvalue()) and "img_s=" in shown.getvalue()
