"""Bad input, one table: each case gets one line on stderr saying what was wrong (and how to fix
it), exit code 2, no traceback, and no file of an existing run changed.

Cases that reach the run directory are pointed at a finished run (`existing`): it must come out
byte for byte the same. Cases that need a clean directory (data, replicas, init_from) use a fresh
one, which must stay empty. Every case runs the real console-script entry point in-process.
"""
import json
from pathlib import Path

import pytest

from conftest import TINY, cli_in_process, file_digests
from resnet_train.train import load_config, train_and_evaluate

MARKER = Path("/tmp/resnet_train_yaml_exploit_marker")


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    existing = root / "existing"
    train_and_evaluate(load_config((*TINY, "epochs=1")), existing)
    (root / "a_file").write_text("not a directory")
    (root / "empty").mkdir()
    one_class = root / "one_class" / "cats"
    one_class.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one_class / f"{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "configs" / "experiment").mkdir(parents=True)
    (root / "configs" / "experiment" / "broken.yaml").write_text("epochs: [1, 2\n")
    (root / "imagenet_manual").mkdir()
    evil = root / "evil_run"
    (evil / ".hydra").mkdir(parents=True)
    (evil / ".hydra" / "config.yaml").write_text(f"depth: !!python/object/apply:os.system ['touch {MARKER}']\n")
    (evil / "dataset.json").write_text((existing / "dataset.json").read_text())
    return {"root": root, "existing": existing}


# (id, tool, arguments ({root} and {existing} are filled in), expected words, where, environment)
CASES = [
    ("unknown key", "resnet-train", ["optimzer.lr=0.1"], "unknown setting 'optimzer.lr' (did you mean optimizer.lr?)", "existing", {}),
    ("unknown top-level key", "resnet-train", ["epoch=3"], "(did you mean epochs?)", "existing", {}),
    ("override syntax", "resnet-train", ["depth==20"], "Error parsing override", "existing", {}),
    ("depth not 6n+2", "resnet-train", ["depth=21"], "depth", "existing", {}),
    ("depth not an integer", "resnet-train", ["depth=abc"], "depth must be an integer", "existing", {}),
    ("depth wrong for the variant", "resnet-train", ["model.variant=imagenet", "depth=20"], "depth", "existing", {}),
    ("unknown dataset", "resnet-train", ["data=cifar11"], "unknown data 'cifar11' (did you mean cifar10?)", "existing", {}),
    ("unknown optimizer", "resnet-train", ["optimizer=adamax"], "unknown optimizer 'adamax'", "existing", {}),
    ("unknown experiment", "resnet-train", ["experiment=cifar10_papr"], "unknown experiment 'cifar10_papr'", "existing", {}),
    ("zero lr", "resnet-train", ["optimizer.lr=0"], "optimizer.lr", "existing", {}),
    ("negative lr", "resnet-train", ["optimizer.lr=-0.1"], "optimizer.lr", "existing", {}),
    ("zero epochs", "resnet-train", ["epochs=0"], "epochs must be a positive integer", "existing", {}),
    ("negative epochs", "resnet-train", ["epochs=-3"], "epochs must be a positive integer", "existing", {}),
    ("zero batch", "resnet-train", ["batch_size=0"], "batch_size must be a positive integer", "existing", {}),
    ("negative seed", "resnet-train", ["seed=-1"], "seed must be a non-negative integer", "existing", {}),
    ("unknown precision", "resnet-train", ["runtime.precision=fp8"], "runtime.precision must be one of", "existing", {}),
    ("unknown strategy", "resnet-train", ["runtime.strategy=tpu"], "runtime.strategy must be one of", "existing", {}),
    ("xla not a boolean", "resnet-train", ["runtime.xla=maybe"], "runtime.xla must be true or false", "existing", {}),
    ("zero steps", "resnet-train", ["steps=0"], "steps must be null or a positive integer", "existing", {}),
    ("warm-up longer than the run", "resnet-train", ["schedule.warmup_epochs=100", "epochs=1"], "schedule.warmup_epochs=100 is longer than the run (1 epoch): lower it or raise epochs", "existing", {}),
    ("one checkpoint kept", "resnet-train", ["checkpoint.keep=1"], "checkpoint.keep must be an integer >= 2", "existing", {}),
    ("yaml syntax error", "resnet-train", ["--config-dir", "{root}/configs", "experiment=broken"], "YAML syntax error", "existing", {}),
    ("resume with another config", "resnet-train", [*TINY, "epochs=1", "optimizer.lr=0.5"], "holds a run with another config (optimizer.lr: 0.1 -> 0.5)", "existing", {}),
    ("malformed TF_CONFIG", "resnet-train", ["runtime=multi_worker"], "TF_CONFIG must be JSON", "existing", {"TF_CONFIG": "{bad"}),
    ("run dir under a file", "resnet-train", ["hydra.run.dir={root}/a_file/run"], "Not a directory", None, {}),
    ("batch not divisible by replicas", "resnet-train", ["runtime=mirrored", "runtime.cpu_replicas=2", "batch_size=33"], "does not divide over 2 replicas", "fresh", {}),
    ("batch larger than the data", "resnet-train", [*TINY, "batch_size=4096"], "is larger than the 128 training images", "fresh", {}),
    ("label smoothing out of range", "resnet-train", [*TINY, "augment.label_smoothing=1.5"], "augment.label_smoothing", "fresh", {}),
    ("ema decay out of range", "resnet-train", [*TINY, "ema.decay=2"], "ema.decay", "fresh", {}),
    ("missing cifar data_dir", "resnet-train", ["data=cifar10", "data.data_dir={root}/nowhere", "data.manual_dir={root}/nowhere"], "cifar-10-binary.tar.gz", "fresh", {}),
    ("missing imagenet archives", "resnet-train", ["data=imagenet", "data.data_dir={root}/tfds", "data.manual_dir={root}/imagenet_manual"], "ILSVRC2012_img_train.tar", "fresh", {}),
    ("image folder missing", "resnet-train", ["data=folder", "data.path={root}/no_such_folder"], "no_such_folder", "fresh", {}),
    ("image folder empty", "resnet-train", ["data=folder", "data.path={root}/empty"], "empty", "fresh", {}),
    ("image folder with one class", "resnet-train", ["data=folder", "data.path={root}/one_class"], "class", "fresh", {}),
    ("init_from nothing", "resnet-train", [*TINY, "init_from={root}/no_such_run"], "does not exist", "fresh", {}),
    ("init_from another architecture", "resnet-train", [*TINY, "depth=14", "init_from={existing}"], "does not fit", "fresh", {}),
    ("run= not a run directory", "resnet-eval", ["run={root}/empty"], "not a resnet-train run directory", None, {}),
    ("checkpoint= nothing", "resnet-eval", ["run={existing}", "checkpoint={root}/nope"], "no checkpoint", None, {}),
    ("unreadable image", "resnet-predict", ["run={existing}", "images=[{root}/broken.png]"], "could not predict", None, {}),
    ("unknown export format", "resnet-export", ["run={existing}", "format=onnx"], "format must be one of", None, {}),
    ("config with a YAML exploit", "resnet-eval", ["run={root}/evil_run"], "config", None, {}),
]


@pytest.mark.parametrize("name,tool,args,expected,where,env", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(places, tmp_path, monkeypatch, capsys,
                                                           name, tool, args, expected, where, env):
    root, existing = places["root"], places["existing"]
    args = [a.format(root=root, existing=existing) for a in args]
    fresh = tmp_path / "fresh"
    if tool == "resnet-train" and where:
        args.append(f"hydra.run.dir={existing if where == 'existing' else fresh}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = file_digests(existing)

    code, out, err = cli_in_process(monkeypatch, capsys, tool, *args)

    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]  # not log lines
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{tool}: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert file_digests(existing) == before
    if where == "fresh" and fresh.exists():  # at most the log of the attempt
        assert set(file_digests(fresh)) <= {"train.log"}
    assert not MARKER.exists()  # nothing in a config is executed


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25


def test_hydra_full_error_still_gives_the_traceback(places, monkeypatch, capsys):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        cli_in_process(monkeypatch, capsys, "resnet-train", "optimzer.lr=0.1",
                       f"hydra.run.dir={places['existing']}")


def test_dataset_json_of_the_existing_run_is_a_real_run(places):
    # The fixture really is a finished run (so "unchanged" above means something).
    assert json.loads((places["existing"] / "results.json").read_text())["epochs"] == 1
