"""A value that needs no data to be refused is refused before TensorFlow is imported (issue 35
item 5: the refusal took ~5.6 s on an idle machine because TensorFlow started first). Each case runs
in a new interpreter in which importing TensorFlow or Keras fails the test."""

from __future__ import annotations

import sys
import textwrap

import launches
import pytest

NO_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, sys
    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("tensorflow", "keras"):
                print(f"IMPORTED {name} before refusing", file=sys.stderr)
                sys.stderr.flush()
                import os; os._exit(99)
    sys.meta_path.insert(0, NoTensorFlow())
    sys.argv = ["resnet-train", *sys.argv[1:]]
    from resnet_train import cli
    cli.train()
""")


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=0", "batch_size must be a positive integer"),
        ("model.padding=valid", "model.padding must be"),
        ("early_stop.patience=-1", "early_stop.patience"),
        ("optimizer.accumulate_steps=0", "optimizer.accumulate_steps must be a positive integer"),
        ("depth=7", "depth must be 6n+2"),
        ("schedule.warmup_epochs=20", "is longer than the run"),
        ("data.task=multilabel", "data.task=multilabel: data.source=embedded has one label per image"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_without_importing_tensorflow(tmp_path, override, message):
    run = tmp_path / "run"
    done = launches.run(
        [sys.executable, "-c", NO_TENSORFLOW, override, "epochs=10", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=120, fresh=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("resnet-train: error:"), done.stderr
    assert not (run / "train.log").exists() and not (run / "checkpoints").exists()
