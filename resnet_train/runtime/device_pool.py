"""runtime.devices=pool: one device per run, for sweeps whose members outnumber the GPUs.

A run takes an exclusive `flock` on one lock file per device in runtime.device_pool_dir (default:
/tmp/resnet-train-device-locks-<uid>, one per user and host, so every run of this user here shares
the pool, whichever sweep it belongs to), trying each device in turn and waiting until one is free.
The kernel drops a flock when its process ends, however it ends (SIGKILL, the OOM killer), so a
killed member cannot leak its device; nothing is ever unlinked (an unlink races a waiting opener).
The held GPU becomes the only GPU TensorFlow sees in the process (set_visible_devices, before its
runtime starts: no memory on the others). Without GPUs, runtime.cpu_replicas logical CPU devices
stand in for them (how the tests prove the locking); no GPU and no split CPU: one clear error.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from resnet_train.errors import ConfigError

log = logging.getLogger(__name__)
POOL = "pool"
POLL_S = 1.0  # between tries; members run for minutes
REPORT_EVERY_S = 60.0  # a waiting member's progress line


@dataclass
class Held:
    device: str  # "GPU:3" (the physical GPU, as CUDA_VISIBLE_DEVICES numbers it) or "CPU:1"
    lock: Path
    waited_s: float
    fd: int

    def record(self) -> dict:
        """What results.json says about it."""
        return {"device": self.device, "lock": str(self.lock), "waited_s": round(self.waited_s, 1)}


_held: Held | None = None
# The GPU this process's TensorFlow was limited to (visibility is fixed once its runtime started):
# a later run in the same process (Hydra's basic launcher, a reused joblib worker) can use only it.
_bound: str | None = None


def default_dir() -> Path:
    return Path("/tmp") / f"resnet-train-device-locks-{os.getuid()}"


def lock_path(directory, device: str) -> Path:
    """The host in the name: a directory shared by several hosts keeps their devices apart."""
    return Path(directory) / f"{socket.gethostname()}.{device.replace(':', '').lower()}.lock"


def check(r) -> None:
    """config.validate's part: runtime.devices is null, pool or a list of device names."""
    d = r.devices
    listed = not isinstance(d, (str, int, float, bool)) and not hasattr(d, "keys")
    if not (d is None or d == POOL or (listed and all(isinstance(x, str) for x in d))):
        raise ConfigError(
            f"runtime.devices must be null (every GPU, or the CPU), pool (one free device per run, "
            f"waiting for one) or a list such as [/gpu:0,/gpu:1] (got {d!r})"
        )
    t = r.device_pool_timeout_s
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0):
        raise ConfigError(
            f"runtime.device_pool_timeout_s must be null (wait as long as it takes) or a number of "
            f"seconds > 0 (got {t!r})"
        )


def _holder(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"PID {owner['pid']} on {owner['host']} ({owner['run']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process"


def _try(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire(directory, devices: list[str], run: str = "", timeout_s=None, poll_s: float = POLL_S) -> Held:
    """Holds the first of `devices` whose lock is free, waiting (a line every REPORT_EVERY_S) until
    one is; ConfigError after `timeout_s` (None: no limit). This process's previous hold ends first:
    a process runs one member at a time."""
    global _held
    release()
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise ConfigError(f"runtime.device_pool_dir: cannot create {directory} ({e.strerror})") from None
    paths = {d: lock_path(directory, d) for d in devices}
    start, reported = time.monotonic(), None
    while True:
        for device, path in paths.items():
            fd = _try(path)
            if fd is not None:
                os.ftruncate(fd, 0)  # who holds it, for the lines of those waiting
                os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run": run}).encode())
                _held = Held(device, path, time.monotonic() - start, fd)
                log.info("Device pool: holding %s (%s, waited %.0f s)", device, path, _held.waited_s)
                return _held
        waited = time.monotonic() - start
        holders = "; ".join(f"{d} by {_holder(p)}" for d, p in paths.items())
        if timeout_s is not None and waited >= timeout_s:
            raise ConfigError(
                f"runtime.devices=pool: no device came free in {waited:.0f} s ({holders}; locks in "
                f"{directory}): raise runtime.device_pool_timeout_s, or set it to null to wait as long as it takes"
            )
        if reported is None or time.monotonic() - reported >= REPORT_EVERY_S:
            log.info("Device pool: all %d device(s) held (%s); waiting %.0f s so far", len(paths), holders, waited)
            reported = time.monotonic()
        time.sleep(poll_s)


def release() -> None:
    """Ends this process's hold (the kernel does it too when the process ends)."""
    global _held
    if _held is not None:
        os.close(_held.fd)  # closing the only descriptor drops the flock
        _held = None


def held() -> dict | None:
    return _held.record() if _held is not None else None


def _gpu_names(count: int) -> list[str]:
    """Physical GPUs as CUDA_VISIBLE_DEVICES names them, so that runs restricted to different GPU
    sets (CUDA_VISIBLE_DEVICES=2,3 here, =0,1 there) lock the GPUs they really use."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ids = visible if len(visible) == count else [str(i) for i in range(count)]
    return [f"GPU:{i}" for i in ids]


def take(r, run: str = "") -> list[str]:
    """runtime.devices=pool: holds a free device and returns the runtime.devices to use (the
    strategy's one device). Before TensorFlow's runtime starts, or the GPU cannot be hidden."""
    global _bound
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # lists without starting the runtime
    directory = r.device_pool_dir or default_dir()
    if gpus:
        names = _gpu_names(len(gpus))
        held = acquire(directory, [_bound] if _bound else names, run, r.device_pool_timeout_s)
        if _bound is None:
            try:
                tf.config.set_visible_devices([gpus[names.index(held.device)]], "GPU")
                _bound = held.device
            except RuntimeError:  # the runtime already started with every GPU visible: place on ours
                return [f"/gpu:{names.index(held.device)}"]
        return ["/gpu:0"]
    if r.cpu_replicas > 1:  # logical CPU devices stand in for GPUs
        held = acquire(directory, [f"CPU:{i}" for i in range(r.cpu_replicas)], run, r.device_pool_timeout_s)
        return [f"/cpu:{held.device.split(':')[1]}"]
    raise ConfigError(
        "runtime.devices=pool shares this machine's GPUs among runs, but TensorFlow sees no GPU here: "
        "drop runtime.devices=pool (or set runtime.cpu_replicas=N for N logical CPU devices to share)"
    )
