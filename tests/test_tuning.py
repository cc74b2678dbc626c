"""runtime=auto tunes itself: which levers (oneDNN, XLA, steps per call) a measurement chose, how
explicit settings win, and one real measurement (two fresh processes) on a tiny probe."""
import json

import pytest

from conftest import compose
from resnet_train import onednn, tuning

RATES = {"1": {"plain": 1000.0, "xla": 550.0, "spc": 1010.0}, "0": {"plain": 360.0}}


def test_a_lever_leaves_its_default_only_when_measured_clearly_faster():
    assert tuning.choose(RATES) == {"onednn": [True, "oneDNN 2.78x without"], "xla": [False, "XLA 0.55x without"],
                                    "steps_per_call": [1, "4 steps per call 1.01x one"]}
    # oneDNN slower by more than the noise margin: off, and XLA / steps per call from that process.
    slower = {"1": {"plain": 300.0}, "0": {"plain": 400.0, "xla": 480.0, "spc": 440.0}}
    assert tuning.choose(slower) == {"onednn": [False, "oneDNN 0.75x without"], "xla": [True, "XLA 1.20x without"],
                                     "steps_per_call": [4, "4 steps per call 1.10x one"]}
    # Within MIN_GAIN either way: no measured choice, the CPU's rule decides.
    close = {"1": {"plain": 1000.0}, "0": {"plain": 960.0}}
    assert tuning.choose(close)["onednn"] == [None, "oneDNN 1.04x without: under 1.08x either way, the CPU's rule "
                                                    "decides"]
    # A probe that failed (an empty result) chooses nothing.
    assert tuning.choose({"1": {}, "0": {}}) == {
        "onednn": [None, "not measured (a probe failed): the CPU's rule decides"], "xla": [False, "XLA not measured"],
        "steps_per_call": [1, "steps per call not measured"]}


def test_explicit_settings_win_and_only_runtime_auto_uses_the_measurement(monkeypatch):
    entry = {"choices": tuning.choose({"1": {"plain": 300.0, "xla": 400.0, "spc": 400.0}, "0": {"plain": 100.0}}),
             "date": "2026-12-02"}
    monkeypatch.setattr(tuning, "cached", lambda: entry)
    monkeypatch.setattr(tuning, "_has_gpu", lambda: False)
    auto = tuning.resolve(compose("runtime=auto").runtime)
    assert auto == {"onednn": (True, "measured 2026-12-02: oneDNN 3.00x without"),
                    "xla": (True, "measured 2026-12-02: XLA 1.33x without"),
                    "steps_per_call": (4, "measured 2026-12-02: 4 steps per call 1.33x one")}
    mine = tuning.resolve(compose("runtime=auto", "runtime.xla=false", "runtime.steps_per_call=2").runtime)
    assert mine["xla"] == (False, "runtime.xla=false") and mine["steps_per_call"] == (2, "runtime.steps_per_call=2")
    # Another runtime keeps the defaults, as does a machine with GPUs.
    assert tuning.resolve(compose("runtime=one_device").runtime)["xla"] == (False, "default (not runtime=auto)")
    monkeypatch.setattr(tuning, "_has_gpu", lambda: True)
    assert tuning.resolve(compose("runtime=auto").runtime)["steps_per_call"] == (1, "default (not runtime=auto)")
    # oneDNN's measured choice is used by `auto` when no TF_ENABLE_ONEDNN_OPTS is exported.
    assert onednn.decide("auto", environ={}, measured=[False, "oneDNN 0.75x without"]) == (
        False, "runtime=auto measured this machine: oneDNN 0.75x without")
    assert onednn.decide("auto", environ={"TF_ENABLE_ONEDNN_OPTS": "1"}, measured=[False, "x"])[0] is True


def test_the_measurement_runs_once_per_machine_and_is_cached(tmp_path, monkeypatch):
    """For real: two fresh processes (oneDNN on, then off) time a tiny probe; the second call
    reads the cache; another TensorFlow version or CPU is another entry."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "PROBE", {"depth": 8, "batch_size": 8, "spc": 2})
    entry = tuning.tune()
    rates = entry["images_per_sec"]
    assert set(rates) == {"1", "0"} and rates["1"]["plain"] > 0 and rates["0"]["plain"] > 0
    assert set(rates["1"]) == {"plain", "xla", "spc"}  # XLA and steps per call under oneDNN on (unless off won)
    assert set(entry["choices"]) == {"onednn", "xla", "steps_per_call"}
    assert entry["choices"]["steps_per_call"][0] in (1, 2) and entry["probe"]["depth"] == 8
    saved = json.loads((tmp_path / "resnet_train" / "tuning.json").read_text())
    assert saved == {tuning.machine_key(): entry}

    monkeypatch.setattr(tuning, "measure", lambda probe=None: pytest.fail("measured again"))
    assert tuning.tune() == entry
    monkeypatch.setattr(tuning, "machine_key", lambda: "another CPU")
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        tuning.tune()


def test_an_unwritable_cache_measures_nothing_and_keeps_the_defaults(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file"))
    monkeypatch.setattr(tuning, "measure", lambda probe=None: pytest.fail("measured without a cache"))
    said = []
    assert tuning.tune(log=said.append) == {}
    assert said == [f"runtime=auto: not measuring this machine: cannot write its cache "
                    f"{tmp_path / 'a_file' / 'resnet_train' / 'tuning.json'} (Not a directory); the levers keep "
                    f"their defaults (set XDG_CACHE_HOME to a writable folder)"]
    monkeypatch.setattr(tuning, "_has_gpu", lambda: False)
    assert tuning.resolve(compose("runtime=auto").runtime)["xla"] == (False, "default (not measured on this machine)")
