"""What the tool loads cannot run code: no pickles, Keras' safe mode, configs only name our own
classes, no shell. (The YAML side: tests/test_bad_input.py's 'config with a YAML exploit'.)"""
import re
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "resnet_train").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
FORBIDDEN = {
    r"\bimport pickle\b|\bpickle\.load": "pickle",
    r"allow_pickle\s*=\s*True": "numpy pickles",
    r"safe_mode\s*=\s*False": "Keras' unsafe loading",
    r"shell\s*=\s*True|os\.system\(|os\.popen\(": "a shell",
    r"\beval\(|\bexec\(": "eval/exec",
    r"hydra\.utils\.instantiate|\binstantiate\(": "config-driven imports",
    r"enable_unsafe_deserialization": "Keras' unsafe deserialisation",
}


@pytest.mark.parametrize("pattern", FORBIDDEN, ids=list(FORBIDDEN.values()))
def test_no_source_file_uses(pattern):
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not hits, hits


def test_config_targets_are_only_our_own_or_hydra_plugins():
    targets = [(p.name, m) for p in (ROOT / "resnet_train" / "configs").rglob("*.yaml")
               for m in re.findall(r"_target_:\s*(\S+)", p.read_text())]
    assert targets  # the sweep callback at least
    for name, target in targets:
        # Hydra instantiates only callbacks and sweeper samplers (hydra.*); nothing of ours
        # instantiates config-named classes.
        assert target.startswith(("resnet_train.", "optuna.samplers.")), (name, target)


def test_the_export_reload_refuses_a_keras_file_with_code(tmp_path):
    from resnet_train.export import load_predictor

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        load_predictor(path, "keras")
    ok = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ok.save(tmp_path / "ok.keras")
    assert load_predictor(tmp_path / "ok.keras", "keras")(np.ones((1, 2), np.float32)).shape == (1, 1)
