"""runtime=auto tunes itself: which levers (oneDNN, XLA, steps per call, threads) a measurement
chose, how explicit settings win, and one real measurement (fresh processes) on a tiny probe."""

import json

import pytest
from helpers import compose

from resnet_train.runtime import onednn, threads, tuning

RATES = {"1": {"plain": 1000.0, "xla": 550.0, "spc": 1010.0, "inter_op_1": 900.0}, "0": {"plain": 360.0}}


def test_a_lever_leaves_its_default_only_when_measured_clearly_faster():
    assert tuning.choose(RATES) == {
        "onednn": [True, "oneDNN 2.78x without"],
        "xla": [False, "XLA 0.55x without"],
        "steps_per_call": [1, "4 steps per call 1.01x one"],
        "threads": ["default", "1 inter-op thread 0.90x TensorFlow's default"],
    }
    # oneDNN slower by more than the noise margin: off, and XLA / steps per call / threads from that process.
    slower = {"1": {"plain": 300.0}, "0": {"plain": 400.0, "xla": 480.0, "spc": 440.0, "inter_op_1": 440.0}}
    assert tuning.choose(slower) == {
        "onednn": [False, "oneDNN 0.75x without"],
        "xla": [True, "XLA 1.20x without"],
        "steps_per_call": [4, "4 steps per call 1.10x one"],
        "threads": [[1, 0], "1 inter-op thread 1.10x TensorFlow's default"],
    }
    # oneDNN over twice as fast as without: XLA (its own kernels, not oneDNN's) is not tried.
    untried = tuning.choose({"1": {"plain": 1000.0, "spc": 1000.0, "inter_op_1": 950.0}, "0": {"plain": 300.0}})
    assert untried["xla"][0] is False and untried["xla"][1].startswith("XLA not tried: oneDNN 3.33x without it")
    # Within MIN_GAIN either way: no measured choice, the CPU's rule decides.
    close = {"1": {"plain": 1000.0}, "0": {"plain": 960.0}}
    assert tuning.choose(close)["onednn"] == [
        None,
        "oneDNN 1.04x without: under 1.08x either way, the CPU's rule decides",
    ]
    # A probe that failed (an empty result) chooses nothing.
    assert tuning.choose({"1": {}, "0": {}}) == {
        "onednn": [None, "not measured (a probe failed): the CPU's rule decides"],
        "xla": [False, "XLA not measured"],
        "steps_per_call": [1, "steps per call not measured"],
        "threads": ["default", "threads not measured"],
    }


def test_explicit_settings_win_and_only_runtime_auto_uses_the_measurement(monkeypatch):
    entry = {
        "choices": tuning.choose(
            {"1": {"plain": 300.0, "xla": 400.0, "spc": 400.0, "inter_op_1": 330.0}, "0": {"plain": 100.0}}
        ),
        "date": "2026-12-02",
    }
    monkeypatch.setattr(tuning, "cached", lambda: entry)
    monkeypatch.setattr(tuning, "_has_gpu", lambda: False)
    auto = tuning.resolve(compose("runtime=auto").runtime)
    assert auto == {
        "onednn": (True, "measured 2026-12-02: oneDNN 3.00x without"),
        "xla": (True, "measured 2026-12-02: XLA 1.33x without"),
        "steps_per_call": (4, "measured 2026-12-02: 4 steps per call 1.33x one"),
        "threads": ([1, 0], "measured 2026-12-02: 1 inter-op thread 1.10x TensorFlow's default"),
    }
    mine = tuning.resolve(
        compose("runtime=auto", "runtime.xla=false", "runtime.steps_per_call=2", "runtime.threads=[2,1]").runtime
    )
    assert mine["xla"] == (False, "runtime.xla=false") and mine["steps_per_call"] == (2, "runtime.steps_per_call=2")
    assert list(mine["threads"][0]) == [2, 1] and mine["threads"][1] == "runtime.threads=[2,1]"
    # Another runtime keeps the defaults, as does a machine with GPUs.
    assert tuning.resolve(compose("runtime=one_device").runtime)["xla"] == (False, "default (not runtime=auto)")
    monkeypatch.setattr(tuning, "_has_gpu", lambda: True)
    assert tuning.resolve(compose("runtime=auto").runtime)["steps_per_call"] == (1, "default (not runtime=auto)")
    # oneDNN's measured choice is used by `auto` when no TF_ENABLE_ONEDNN_OPTS is exported.
    assert onednn.decide("auto", environ={}, measured=[False, "oneDNN 0.75x without"]) == (
        False,
        "runtime=auto measured this machine: oneDNN 0.75x without",
    )
    assert onednn.decide("auto", environ={"TF_ENABLE_ONEDNN_OPTS": "1"}, measured=[False, "x"])[0] is True


def test_the_measurement_runs_once_per_machine_and_is_cached(tmp_path, monkeypatch):
    """For real: fresh processes (oneDNN on, then off, then one inter-op thread under the faster)
    time a tiny probe; the second call reads the cache; another TensorFlow version or CPU, or an
    entry from before a lever existed, is measured again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(tuning, "PROBE", {"depth": 8, "batch_size": 8, "spc": 2})
    entry = tuning.tune()
    rates = entry["images_per_sec"]
    assert set(rates) == {"1", "0"} and rates["1"]["plain"] > 0 and rates["0"]["plain"] > 0
    faster = "0" if entry["choices"]["onednn"][0] is False else "1"  # XLA, steps per call, threads under it
    assert {"plain", "spc", "inter_op_1"} <= set(rates[faster]) <= {"plain", "xla", "spc", "inter_op_1"}
    assert rates[faster]["inter_op_1"] > 0
    if "xla" not in rates[faster]:  # oneDNN at least twice as fast as without on this probe
        assert rates["1"]["plain"] >= 2 * rates["0"]["plain"] and entry["choices"]["xla"][1].startswith("XLA not tried")
    assert set(entry["choices"]) == {"onednn", "xla", "steps_per_call", "threads"}
    assert entry["choices"]["threads"][0] in ("default", [1, 0])
    assert entry["choices"]["steps_per_call"][0] in (1, 2) and entry["probe"]["depth"] == 8
    saved = json.loads((tmp_path / "resnet_train" / "tuning.json").read_text())
    assert saved == {tuning.machine_key(): entry}

    monkeypatch.setattr(tuning, "measure", lambda probe=None: pytest.fail("measured again"))
    assert tuning.tune() == entry
    monkeypatch.setattr(tuning, "machine_key", lambda: "another CPU")
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        tuning.tune()
    older = {**entry, "choices": {k: v for k, v in entry["choices"].items() if k != "threads"}}
    monkeypatch.setattr(tuning, "cached", lambda: older)
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        tuning.tune()


def test_thread_pools_are_set_before_tensorflow_starts_explicit_then_exported_then_measured(monkeypatch):
    monkeypatch.setattr(threads, "_applied", None)
    env = {"TF_NUM_INTRAOP_THREADS": "3"}
    assert threads.apply([1, 2], environ=env) == "runtime.threads=[1,2]: 1 inter-op, 2 intra-op"
    assert env == {"TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "2"}
    assert threads.in_effect() == "runtime.threads=[1,2]: 1 inter-op, 2 intra-op"  # the run's log line
    # 0 is TensorFlow's default for that pool: the variable goes (explicit settings win over exports).
    assert threads.apply([1, 0], environ=env) == "runtime.threads=[1,0]: 1 inter-op, default intra-op"
    assert env == {"TF_NUM_INTEROP_THREADS": "1"}
    assert threads.apply("default", environ=env).endswith("TensorFlow's default, one per core in each pool")
    assert env == {}
    # auto: an exported variable wins over the measurement, which wins over the default.
    measured = [[1, 0], "1 inter-op thread 1.12x TensorFlow's default"]
    exported = {"TF_NUM_INTEROP_THREADS": "4"}
    assert threads.apply("auto", measured, environ=exported) == "TF_NUM_INTEROP_THREADS=4 exported"
    assert exported == {"TF_NUM_INTEROP_THREADS": "4"}
    assert threads.apply("auto", measured, environ=env) == (
        "measured: 1 inter-op thread 1.12x TensorFlow's default: 1 inter-op, default intra-op"
    )
    assert env == {"TF_NUM_INTEROP_THREADS": "1"}
    assert threads.apply("auto", None, environ={}) == ("not tuned: TensorFlow's default, one per core in each pool")


def test_a_run_in_process_undoes_its_environment_but_what_a_tensorflow_it_started_read(monkeypatch):
    """runtime.environ_restored, around train_and_evaluate and the console entry points called as
    functions: TensorFlow's start-up variables stay only if it started inside, and so runs with them."""
    import os
    import sys
    import types

    from resnet_train.runtime import TF_START_ENV, environ_restored

    for name in (*TF_START_ENV, "RESNET_TEST_SET", "RESNET_TEST_GONE"):
        monkeypatch.setenv(name, "0")  # (monkeypatch puts each back as it was after the test)
    tensorflow = sys.modules.get("tensorflow") or types.ModuleType("tensorflow")  # imported or not
    monkeypatch.setitem(sys.modules, "tensorflow", tensorflow)

    def run(tensorflow_starts_inside: bool) -> dict:
        """What changed in os.environ once a run that changes, adds and removes variables ends."""
        before = dict(os.environ)
        if tensorflow_starts_inside:
            del sys.modules["tensorflow"]
        with environ_restored():
            sys.modules["tensorflow"] = tensorflow
            os.environ.update({name: "1" for name in (*TF_START_ENV, "RESNET_TEST_SET", "RESNET_TEST_ADDED")})
            del os.environ["RESNET_TEST_GONE"]
        return {k: os.environ.get(k) for k in {*before, *os.environ} if os.environ.get(k) != before.get(k)}

    assert run(tensorflow_starts_inside=False) == {}  # it had read them before the run: all undone
    assert run(tensorflow_starts_inside=True) == dict.fromkeys(TF_START_ENV, "1")  # read now: they stay


def test_an_unwritable_cache_measures_nothing_and_keeps_the_defaults(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file"))
    monkeypatch.setattr(tuning, "measure", lambda probe=None: pytest.fail("measured without a cache"))
    said = []
    assert tuning.tune(log=said.append) == {}
    assert said == [
        f"runtime=auto: not measuring this machine: cannot write its cache "
        f"{tmp_path / 'a_file' / 'resnet_train' / 'tuning.json'} (Not a directory); the levers keep "
        f"their defaults (set XDG_CACHE_HOME to a writable folder)"
    ]
    monkeypatch.setattr(tuning, "_has_gpu", lambda: False)
    assert tuning.resolve(compose("runtime=auto").runtime)["xla"] == (False, "default (not measured on this machine)")
