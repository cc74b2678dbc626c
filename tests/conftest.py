"""Shared fixtures: tiny real-format archives, config composition, running the CLI.

Also what no test may depend on: the network (a guard, in this process and in every Python
subprocess), the user's environment (HYDRA_FULL_ERROR, TF_CONFIG, TFDS_DATA_DIR,
TF_DETERMINISTIC_OPS), process-wide TensorFlow state left by an earlier test (op determinism,
the Keras precision policy) and temporary folders left behind."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # scripts/benchmarks.py for test_bench
import launches
import leaks
from helpers import CIFAR_LAYOUT, cli_in_process, compose, register_fake_archive, write_fake_cifar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Everything this session writes outside pytest's tmp_path lives here and is removed at exit,
# temporary files included: TMPDIR points here for this process and every subprocess (TensorFlow's
# autograph files, a worker's checkpoint folder, tfds's and export's temporary folders). pytest's
# own tmp_path stays where it was, kept for a look after a failure as pytest keeps it.
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
SESSION_DIR = Path(tempfile.mkdtemp(prefix="resnet_train_tests_"))
atexit.register(shutil.rmtree, SESSION_DIR, ignore_errors=True)
(SESSION_DIR / "tmp").mkdir()
os.environ["TMPDIR"] = tempfile.tempdir = str(SESSION_DIR / "tmp")
# The controller's mark, inherited by pytest-xdist's workers: every process of this test run has it.
os.environ.setdefault(leaks.SESSION_MARK, str(SESSION_DIR))

# The measured matmul rate (for MFU) is cached under XDG_CACHE_HOME: keep tests out of ~/.cache.
os.environ["XDG_CACHE_HOME"] = str(SESSION_DIR / "cache")

# The user's settings must not change outcomes (in this process and in the CLI subprocesses, which
# inherit os.environ): no traceback mode, no cluster, no tracking server, no ~/tensorflow_datasets (an empty folder
# instead, so a test never finds the user's prepared datasets), no determinism switched on from outside.
TFDS_DATA_DIR = SESSION_DIR / "tensorflow_datasets"
TFDS_DATA_DIR.mkdir()
RESET_ENV = {
    "HYDRA_FULL_ERROR": None,
    "TF_CONFIG": None,
    "TF_DETERMINISTIC_OPS": None,
    "TFDS_DATA_DIR": str(TFDS_DATA_DIR),
    # The experiment trackers: no user login, server or mode; no telemetry (tests stay offline).
    "MLFLOW_TRACKING_URI": None,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "WANDB_API_KEY": None,
    "WANDB_MODE": None,
    "WANDB_SILENT": "true",
    # Keras reads ~/.keras/keras.json (backend, floatx, image data format): a user's file must not
    # change a test, so HOME is a folder of this session's.
    "HOME": str(SESSION_DIR / "home"),
    "KERAS_BACKEND": "tensorflow",
    "TF_NUM_INTEROP_THREADS": None,
    "TF_NUM_INTRAOP_THREADS": None,
    "TF_XLA_FLAGS": None,
}
(SESSION_DIR / "home").mkdir()
for _key, _value in RESET_ENV.items():  # at import too: module fixtures run before _clean_state
    if _value is None:
        os.environ.pop(_key, None)
    else:
        os.environ[_key] = _value


# runtime.onednn=auto turns oneDNN on where TensorFlow alone would not (x86 CPUs with AVX2 only):
# every subprocess gets this process's choice (TF_ENABLE_ONEDNN_OPTS as given, else TensorFlow's own
# default here), so that a CLI run computes what the in-process runs compute. The suite runs with
# TF_ENABLE_ONEDNN_OPTS=0 and =1; tests that mean to vary it say runtime.onednn explicitly.
def _pin_onednn() -> None:
    if "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        import tensorflow  # noqa: F401  (its import decides)

        from resnet_train.runtime import onednn

        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn.enabled() else "0"


# runtime=auto measures this machine once (~30 s, tuning.py) and caches the result: the suite's cache
# holds a measurement made up here (oneDNN as above, XLA off, 1 step per call), so that no test
# measures and every test runs the same kernels. tests/test_tuning.py measures for real.
def _pinned_tuning() -> None:
    import json

    from resnet_train.runtime import tuning

    pinned = "pinned by tests/conftest.py"
    choices = {
        "onednn": [os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1", pinned],
        "xla": [False, pinned],
        "steps_per_call": [1, pinned],
        "threads": ["default", pinned],
    }
    tuning.cache_path().parent.mkdir(parents=True, exist_ok=True)
    tuning.cache_path().write_text(json.dumps({tuning.machine_key(): {"choices": choices, "date": "the test session"}}))


# ---- GPUs: hidden unless the GPU tier asks -----------------------------------------------------
# On a machine with a GPU, runtime=one_device would pick it, TF32 would round float32 matmuls, and
# cpu_replicas would be dropped: device lists, 2-replica, bit-for-bit and 1e-5 checks would fail or
# prove nothing. So the suite hides every GPU from this process and every process it starts
# (CUDA_VISIBLE_DEVICES, set before TensorFlow is imported and inherited), except in the GPU tier:
# `make test-gpu` (pytest -m gpu) runs only the tests marked gpu, with the machine's GPUs visible.
def gpu_tier(config) -> bool:
    expr = config.option.markexpr or ""
    return "gpu" in expr.split() and "not gpu" not in expr


# ---- the cluster tier: the engines run for real, a one-node SLURM cluster on 127.0.0.1
# (tests/slurm_cluster.py, which it installs, starts and stops) and a local Ray cluster;
# `make test-cluster` (pytest -m cluster) runs it, `make test` skips it (minutes of engine start-up).
def cluster_tier(config) -> bool:
    expr = config.option.markexpr or ""
    return "cluster" in expr.split() and "not cluster" not in expr


# ---- tiers: slow tests are those that took SLOW_SECONDS or more when durations.json was recorded ---
# `make test-fast` (-m "not slow") is the loop before every commit; `make test` runs everything.
# The record (setup + call + teardown per test, 2 cores of an AMD EPYC Zen 3, oneDNN on) is
# refreshed with `make test PYTEST_ARGS=--record-durations=tests/durations.json`; a test it does not
# list yet counts as fast.
SLOW_SECONDS = 0.5  # (1.0 let the fast tier grow past 2 minutes once the compression tests came)
# Fixtures that train a run (or export one) once per module: the test that asks first pays for it,
# so every test using one is slow, whichever of them would ask first.
SLOW_FIXTURES = frozenset(
    ("trained", "trained_copy", "uninterrupted", "ema_run", "single", "source", "small_run", "imagenet_run")
    + ("cli_exports", "together", "chain", "augmented")
)
DURATIONS = Path(__file__).with_name("durations.json")
_measured: dict[str, float] = {}


def pytest_addoption(parser):
    parser.addoption("--record-durations", metavar="FILE", help="write each test's seconds to FILE (json)")


def pytest_runtest_logreport(report):
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    import json

    launches.close()  # the fork server (this process's: each pytest-xdist worker has its own)
    if hasattr(session.config, "workerinput"):
        return
    # The controller, once every worker is done: it saw all their reports.
    path = session.config.getoption("--record-durations")
    if path:
        Path(path).write_text(json.dumps({k: round(v, 2) for k, v in sorted(_measured.items())}, indent=0) + "\n")
    # No process of the suite's outlives it (pytest-xdist's workers, this process's children, are ending).
    import psutil

    workers = psutil.Process().children() if getattr(session.config.option, "dist", "no") != "no" else []
    left = leaks.outliving(leaks.SESSION_MARK, os.environ[leaks.SESSION_MARK], 30, workers)
    if left:
        session.config._outlived = left
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    if launches.summary():
        terminalreporter.write_line(launches.summary())
    for line in getattr(config, "_outlived", []):
        terminalreporter.write_line(f"FAILED: a process the suite started outlived it (killed now): {line}", red=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU; run by `make test-gpu`, skipped where none is visible")
    config.addinivalue_line("markers", "cluster: needs SLURM or Ray; run by `make test-cluster`, skipped otherwise")
    config.addinivalue_line("markers", f"slow: took {SLOW_SECONDS:g}s or more (tests/durations.json): not in test-fast")
    if not gpu_tier(config):
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    RESET_ENV["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")  # each test starts so
    # TensorFlow is imported from here on, never before the line above; without its start-up
    # lines, which pytest holds back with all the set-up output and printed after the summary.
    from resnet_train.cli import _quiet_tensorflow

    _quiet_tensorflow()
    _pin_onednn()
    _pinned_tuning()
    launches.configure(SESSION_DIR, dict(os.environ))  # the environment every test starts from
    _two_logical_cpus()


UNRECORDED_SECONDS = 3.0  # a test durations.json does not list yet (a new one): a typical test's time


def _longest_files_first(items, recorded) -> None:
    """pytest-xdist's --dist loadfile hands out whole files in this order, the next to whichever
    worker frees up first: with the longest first, the last files are short and neither worker
    waits long for the other at the end. A file's own order is kept (its module fixtures)."""
    total, first = {}, {}
    for index, item in enumerate(items):
        total[item.path] = total.get(item.path, 0.0) + recorded.get(item.nodeid, UNRECORDED_SECONDS)
        first.setdefault(item.path, index)
    items.sort(key=lambda item: (-total[item.path], first[item.path]))


def pytest_collection_modifyitems(config, items):
    import json

    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    for item in items:
        if recorded.get(item.nodeid, 0.0) >= SLOW_SECONDS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    _longest_files_first(items, recorded)
    if not cluster_tier(config):
        reason = "cluster tier: run `make test-cluster` (pytest -m cluster: starts a one-node SLURM and a Ray cluster)"
        for item in items:
            if item.get_closest_marker("cluster"):
                item.add_marker(pytest.mark.skip(reason=reason))
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if not marked:
        return
    if not gpu_tier(config):
        reason = "GPU tier: run `make test-gpu` (pytest -m gpu) on a machine with a GPU"
    else:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return
        reason = "no GPU visible to TensorFlow on this machine"
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))


# ---- no network --------------------------------------------------------------------------------
# Any connection (or name lookup) beyond the loopback raises NetworkBlocked and is appended to
# NETWORK_LOG; a test that caused one fails, even if the code under test swallowed the error.
# NetworkBlocked is not an OSError on purpose: "offline" handlers (tfds_source.host_reachable's
# `except OSError`) must not turn an attempted download into a quiet "unreachable".
# Subprocesses: the same code is their sitecustomize.py, found first on PYTHONPATH (inherited by
# every Python child: the console scripts, joblib's workers, helper scripts), and active while
# RESNET_TRAIN_TEST_NETWORK_LOG is set. Scope: Python's socket module, which every Python download
# path (tfds's requests/urllib, urllib3) goes through; TensorFlow's C++ I/O is not covered (tfds
# keeps its GCS access off, and gRPC between multi-worker processes stays on 127.0.0.1).
NETWORK_GUARD = r'''"""Test-suite guard (written by tests/conftest.py): no network beyond the loopback."""
import ipaddress
import os
import socket

LOG = os.environ.get("RESNET_TRAIN_TEST_NETWORK_LOG")


class NetworkBlocked(RuntimeError):
    pass


def _is_ip(host):
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return True
    except ValueError:
        return False


def _local(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host.lower() in ("localhost", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def refuse(what, target):
    message = f"network access in a test: {what} {target!r} (tests may use the loopback only)"
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"pid {os.getpid()}: {message}\n")
    raise NetworkBlocked(message)


def install():
    """Wraps the socket functions with this module's guard (its NetworkBlocked, its LOG). Another
    guard already installed (a pytest-xdist worker starts with its controller's sitecustomize) is
    replaced: the wrappers always go round the original functions."""
    if not hasattr(socket, "_resnet_train_test_originals"):
        socket._resnet_train_test_originals = (socket.socket.connect, socket.socket.connect_ex,
                                               socket.socket.sendto, socket.getaddrinfo)
    connect, connect_ex, sendto, getaddrinfo = socket._resnet_train_test_originals
    inet = (socket.AF_INET, socket.AF_INET6)
    own_name = socket.gethostname()

    def guarded_connect(self, address):
        if self.family in inet and not _local(address[0]):
            refuse("connect to", address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family in inet and not _local(address[0]):
            refuse("connect to", address)
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        if self.family in inet and args and isinstance(args[-1], tuple) and not _local(args[-1][0]):
            refuse("send to", args[-1])
        return sendto(self, data, *args)

    def guarded_getaddrinfo(host, *args, **kwargs):
        # A name lookup is already traffic (DNS); addresses and the machine's own name are local.
        if host not in (None, "", own_name) and not _is_ip(host) and not _local(host):
            refuse("name lookup of", host)
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    socket.socket.sendto, socket.getaddrinfo = guarded_sendto, guarded_getaddrinfo


def _chain_next_sitecustomize():
    """This file shadows any other sitecustomize (Debian's, a venv's): run that one too."""
    import importlib.machinery
    import importlib.util
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if LOG:
    install()
if __name__ == "sitecustomize":
    _chain_next_sitecustomize()
'''
NETWORK_LOG = SESSION_DIR / "network_attempts.log"
NETWORK_LOG.touch()
os.environ["RESNET_TRAIN_TEST_NETWORK_LOG"] = str(NETWORK_LOG)
(SESSION_DIR / "network_guard").mkdir()
(SESSION_DIR / "network_guard" / "sitecustomize.py").write_text(NETWORK_GUARD)
# A guard another test session put there is dropped: a pytest-xdist worker inherits the
# controller's, and two guards would each run the other as "the next sitecustomize", endlessly.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [
        str(SESSION_DIR / "network_guard"),
        *(
            p
            for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and not (Path(p).name == "network_guard" and Path(p).parent.name.startswith("resnet_train_tests_"))
        ),
    ]
)
_spec = importlib.util.spec_from_file_location(
    "resnet_train_test_network_guard", SESSION_DIR / "network_guard" / "sitecustomize.py"
)
network_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(network_guard)  # installs the guard in this process (LOG is set)
NetworkBlocked = network_guard.NetworkBlocked


class NetworkLog:
    """Lines NETWORK_LOG gained since the test started; `take()` hands them to a test that
    causes them on purpose (the guard's own test), so that they do not fail it."""

    def __init__(self):
        self.offset = NETWORK_LOG.stat().st_size

    def take(self) -> list[str]:
        with open(NETWORK_LOG, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace").splitlines()


@pytest.fixture(autouse=True)
def _no_network():
    log = NetworkLog()
    yield log
    attempts = log.take()
    if attempts:
        pytest.fail(
            "this test (or a process it started) tried to reach the network:\n" + "\n".join(attempts), pytrace=False
        )


@pytest.fixture
def network_log(_no_network):
    return _no_network


def _two_logical_cpus():
    """Two logical CPU devices for the whole test process, set before TensorFlow starts, so that
    MirroredStrategy tests run in-process (runtime.cpu_replicas=2). Other tests use /cpu:0."""
    from resnet_train.runtime.devices import split_cpu

    split_cpu(2)


@pytest.fixture(autouse=True, scope="module")
def _free_the_modules_models():
    """A module's models, traced functions and datasets are let go before the next module: the
    process lives through the whole suite, and Keras' session keeps what cycles still reach.

    AutoGraph also puts every module it generates into sys.modules (a TODO in TF's
    autograph/pyct/loader.py), and inspect.getmodule walks all of sys.modules on each lookup it
    has not cached: over a whole suite in one process every conversion got slower (a RandAugment
    run: 14 s alone, 60-110 s late in the suite). A finished module's generated code is dropped."""
    yield
    import gc

    import keras

    keras.backend.clear_session()
    for name in [name for name in sys.modules if name.startswith("__autograph_generated_file")]:
        del sys.modules[name]
    gc.collect()


@pytest.fixture(autouse=True)
def _float32_policy():
    """Precision is a process-wide Keras setting: every test starts from float32."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch, request):
    """Every test starts from the reset environment and with op determinism off
    (runtime.deterministic=true turns it on for the whole process and TensorFlow has no public
    switch back, so without this a test's result would depend on which tests ran before it), and
    ends with os.environ as it found it (whatever the test, or a run in this process, set) and
    with no process it started still running."""
    from tensorflow.python.framework import config as tf_config

    from resnet_train.runtime import environ_restored

    with environ_restored():  # TensorFlow started in pytest_configure: everything is put back
        for key, value in RESET_ENV.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        monkeypatch.setenv(leaks.TEST_MARK, request.node.nodeid)
        tf_config.disable_op_determinism()
        yield
        tf_config.disable_op_determinism()
        wandb = sys.modules.get("wandb")  # (None where a test hid it)
        if wandb is not None:  # its service process, kept for this process's next run, ends as at exit
            wandb.teardown()
        left = launches.outliving(request.node.nodeid, grace_s=30)
        left += leaks.outliving(leaks.TEST_MARK, request.node.nodeid, grace_s=30)
        monkeypatch.undo()
    if left:
        pytest.fail("processes this test started outlived it (killed now):\n" + "\n".join(left), pytrace=False)


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """fake_cifar(name) -> dict(data_dir, manual_dir, written, names) for cifar10 / cifar100."""

    def make(name="cifar10"):
        manual = tmp_path / f"{name}_manual"
        archive = manual / CIFAR_LAYOUT[name][0]
        written, names = write_fake_cifar(archive, name)
        register_fake_archive(monkeypatch, name, archive)
        return {"data_dir": tmp_path / "tfds", "manual_dir": manual, "written": written, "names": names}

    return make


@pytest.fixture
def fake_cifar10(fake_cifar):
    return fake_cifar("cifar10")


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*args, entry="resnet-train") -> CompletedProcess: a console script run in this process
    (cli_in_process), read like run_cli's result. For everything a test does not mean to be about
    a process of its own (signals, kill -9, resource limits, the console script's own exit): no
    TensorFlow start-up per call."""

    def run(*args, entry="resnet-train"):
        code, out, err = cli_in_process(monkeypatch, capsys, str(entry), *args)
        return subprocess.CompletedProcess([entry, *args], code, out, err)

    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(run, *overrides) -> results: `run` becomes a copy of a run of `overrides` trained (in
    this process) once per module, by the first test that asks. Each test damages or stops its own
    copy, as if it had trained the run itself: a moved run directory is the same run to the project
    (the checkpoint indexes name their checkpoints relative to their folder; copytree keeps the
    files' modification times)."""
    import copy
    import shutil

    import tensorflow as tf

    from resnet_train.training.loop import train_and_evaluate

    runs = {}

    def copy_to(run, *overrides):
        if overrides not in runs:
            source = tmp_path_factory.mktemp("trained") / "run"
            runs[overrides] = source, train_and_evaluate(compose(*overrides), source)
        source, results = runs[overrides]
        shutil.copytree(source, run)
        assert Path(tf.train.latest_checkpoint(str(run / "checkpoints"))).parent == run / "checkpoints"
        return copy.deepcopy(results)

    return copy_to


@pytest.fixture
def network_blocked():
    """The error the network guard raises (defined in the guard, which subprocesses load too)."""
    return NetworkBlocked
