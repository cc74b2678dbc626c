"""runtime=auto tunes itself: of the levers that change speed but not the maths -- oneDNN's
kernels, XLA, optimizer steps per compiled call, TensorFlow's thread pools --, it takes what a
short measurement found fastest on this machine.

The measurement runs once per machine and TensorFlow version, on first use, before TensorFlow is
imported (oneDNN and the thread pools are fixed when TensorFlow starts, so each of their settings
is timed in a process of its own: `python -m resnet_train.runtime.tuning`): ResNet-8 (ResNet-20's layer
shapes, a third of its layers: each process traces faster; the same choices and ratios within a
few % as ResNet-20 on the Intel AMX machine, docs/performance.md), batch 64, our
trainer on an in-memory batch, for oneDNN on / off, then under the faster one XLA off / on (not
tried where oneDNN is 2x faster than without: XLA cannot win there), steps_per_call 1 / 4 and one
inter-op thread (ops one at a time, each on every core) against TensorFlow's default (one per
core). About 25-30 s on 2 cores. It is cached in $XDG_CACHE_HOME/resnet_train/tuning.json
(a file lock lets parallel sweep members measure once). A lever leaves its default only when the
measurement finds it at least MIN_GAIN faster: a few steps on a shared machine vary by ~5-10%.
Explicit settings (runtime.onednn=true, runtime.xla=false, runtime.steps_per_call=5,
runtime.threads=[1,2]) always win, as do an exported TF_ENABLE_ONEDNN_OPTS or TF_NUM_*_THREADS;
other runtimes (one_device, mirrored, multi_worker) and GPU machines use the defaults.
No TensorFlow import at module level: the CLI calls tune() before TensorFlow's import.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from resnet_train.report.metrics import write_atomic
from resnet_train.runtime import threads as thread_pools  # `threads` is a local name below

LEVERS = ("onednn", "xla", "steps_per_call", "threads")
XLA_BEYOND = 2.0  # XLA gained 1.19-1.6x over oneDNN off (Zen 3, Zen 5, Intel AMX), never more
ONE_INTER_OP = [1, 0]  # the thread setting the measurement tries: [inter-op, intra-op]; 0 = TF's default
MIN_GAIN = 1.08  # a lever leaves its default only when measured at least this much faster
PROBE = {"depth": 8, "batch_size": 64, "spc": 4}


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "resnet_train" / "tuning.json"


def machine_key() -> str:
    """CPU model, family, cores and the flags that decide TF's kernels, and TensorFlow's version."""
    from importlib.metadata import version

    from resnet_train.runtime.onednn import cpu_flags, cpu_identity

    cpu = cpu_identity()
    flags = sorted(cpu_flags() & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    return (
        f"{cpu['model']} family {cpu['family']} x{os.cpu_count()} [{' '.join(flags)}] "
        f"tensorflow {version('tensorflow')}"
    )


def wanted(r) -> bool:
    """Tuning applies to runtime=auto on a machine without GPUs, for levers left at auto."""
    return str(r.strategy) == "auto" and not _has_gpu() and any(str(r[lever]).lower() == "auto" for lever in LEVERS)


def _has_gpu() -> bool:
    with contextlib.suppress(OSError):
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    return False


def cached() -> dict | None:
    """This machine's measurement, if one was made."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads(cache_path().read_text()).get(machine_key())
    return None


def tune(log=None) -> dict:
    """This machine's measurement: from the cache, else measured now (tens of seconds, once).
    Where the cache cannot be written, nothing is measured (it would be, on every run): the
    levers keep their defaults, and the log says why."""
    found = cached()
    if _complete(found):
        return found
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as e:
        if log:
            log(
                f"runtime=auto: not measuring this machine: cannot write its cache {path} ({e.strerror}); the "
                f"levers keep their defaults (set XDG_CACHE_HOME to a writable folder)"
            )
        return {}
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process measuring: wait for its result
        found = cached()
        if _complete(found):
            return found
        if log:
            log(
                f"runtime=auto: measuring which kernels are fastest on this machine, once "
                f"(~30 s; cached in {path}; runtime.onednn/xla/steps_per_call/threads set explicitly skip it)"
            )
        entry = measure()
        known = {}
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(path.read_text())
        known[machine_key()] = entry
        write_atomic(path, json.dumps(known, indent=2))
    return entry


def _complete(entry: dict | None) -> bool:
    """An entry that chose every lever: one from before a lever was added is measured again."""
    return bool(entry) and all(lever in (entry.get("choices") or {}) for lever in LEVERS)


def measure(probe=None) -> dict:
    """Times every lever setting and chooses. `probe`: overrides of PROBE (tests use a tiny model)."""
    probe = {**PROBE, **(probe or {})}
    started = time.perf_counter()

    def run(onednn: str, what: list[str], pools=(0, 0), **extra) -> dict:
        env = {
            **os.environ,
            "TF_ENABLE_ONEDNN_OPTS": onednn,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **{name: str(n) for name, n in zip(thread_pools.THREADS_ENV, pools)},
        }
        done = subprocess.run(
            [sys.executable, "-m", "resnet_train.runtime.tuning", json.dumps({**probe, "what": what, **extra})],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:  # a probe that cannot run (memory, a broken build): the defaults stay
            return {}
        return json.loads(done.stdout.strip().splitlines()[-1])

    # XLA and steps per call are timed only under the oneDNN setting that will run: one process
    # fewer in the usual case, where oneDNN on is not slower. XLA is not tried where oneDNN is
    # XLA_BEYOND faster than without (XLA's own CPU kernels are not oneDNN's; see choose()).
    off = run("0", ["plain"])
    rates = {
        "1": run("1", ["plain", "xla", "spc"], xla_unless_above=(off.get("plain") or 0) * XLA_BEYOND or None),
        "0": off,
    }
    faster = (
        "0"
        if rates["1"].get("plain") and rates["0"].get("plain") and rates["0"]["plain"] >= rates["1"]["plain"] * MIN_GAIN
        else "1"
    )
    if faster == "0":
        rates["0"].update(run("0", ["xla", "spc"]))
    if rates[faster].get("plain"):
        threads = run(faster, ["plain"], ONE_INTER_OP).get("plain")
        if threads:
            rates[faster]["inter_op_1"] = threads
    return {
        "choices": choose(rates, probe["spc"]),
        "images_per_sec": rates,
        "probe": probe,
        "seconds": round(time.perf_counter() - started, 1),
        "date": datetime.date.today().isoformat(),
    }


def choose(rates: dict, spc: int = PROBE["spc"]) -> dict:
    """{lever: [choice, why]} from {"1"|"0" (oneDNN): {"plain"|"xla"|"spc": images/s}}."""
    on, off = rates.get("1", {}).get("plain"), rates.get("0", {}).get("plain")
    if on and off:
        gain = on / off
        decided = True if gain >= MIN_GAIN else False if 1 / gain >= MIN_GAIN else None
        choice = [
            decided,
            f"oneDNN {gain:.2f}x without"
            + ("" if decided is not None else f": under {MIN_GAIN}x either way, the CPU's rule decides"),
        ]
    else:
        choice = [None, "not measured (a probe failed): the CPU's rule decides"]
    best = rates.get("1" if choice[0] is not False else "0", {})
    plain = best.get("plain")
    levers = {"onednn": choice}
    if plain and best.get("xla"):
        gain = best["xla"] / plain
        levers["xla"] = [gain >= MIN_GAIN, f"XLA {gain:.2f}x without"]
    elif on and off and on >= off * XLA_BEYOND and choice[0] is not False:
        levers["xla"] = [
            False,
            f"XLA not tried: oneDNN {on / off:.2f}x without it, and XLA (its own CPU kernels, "
            f"not oneDNN's) gained at most 1.6x over oneDNN off on the CPUs measured",
        ]
    else:
        levers["xla"] = [False, "XLA not measured"]
    if plain and best.get("spc"):
        gain = best["spc"] / plain
        levers["steps_per_call"] = [spc if gain >= MIN_GAIN else 1, f"{spc} steps per call {gain:.2f}x one"]
    else:
        levers["steps_per_call"] = [1, "steps per call not measured"]
    if plain and best.get("inter_op_1"):
        gain = best["inter_op_1"] / plain
        levers["threads"] = [
            ONE_INTER_OP if gain >= MIN_GAIN else "default",
            f"1 inter-op thread {gain:.2f}x TensorFlow's default",
        ]
    else:
        levers["threads"] = ["default", "threads not measured"]
    return levers


def choice(entry: dict | None, lever: str):
    """[value, why] that a measurement (tune()'s or cached()'s result) chose for `lever`, or None."""
    return ((entry or {}).get("choices") or {}).get(lever)


def resolve(r) -> dict:
    """{lever: (value, why)} for this run: explicit settings as given; levers at auto from this
    machine's measurement under runtime=auto, else the defaults (oneDNN: None, the CPU's rule)."""
    tuned = wanted(r)
    entry = cached() if tuned else None
    defaults = {"onednn": None, "xla": False, "steps_per_call": 1, "threads": "default"}
    out = {}
    for lever in LEVERS:
        value = r[lever]
        if str(value).lower() != "auto":
            out[lever] = (value, f"runtime.{lever}={thread_pools.shown(value)}")
        elif choice(entry, lever):
            out[lever] = (choice(entry, lever)[0], f"measured {entry['date']}: {choice(entry, lever)[1]}")
        else:
            why = "not runtime=auto" if not tuned else "not measured on this machine"
            out[lever] = (defaults[lever], f"default ({why})")
    return out


def _probe(settings: dict) -> dict:
    """In a fresh process (oneDNN fixed by its environment): images/s of each setting asked for."""
    from resnet_train.runtime.probe import train_throughput

    shape, batch, depth, spc = (32, 32, 3), settings["batch_size"], settings["depth"], settings["spc"]
    runs = {
        "plain": dict(windows=2, steps_per_window=2),
        "xla": dict(windows=2, steps_per_window=2, xla=True),
        "spc": dict(windows=2, steps_per_window=2 * spc, steps_per_call=spc),
    }
    out = {}
    for name in settings.get("what", list(runs)):
        if name == "xla" and settings.get("xla_unless_above") and out.get("plain", 0) >= settings["xla_unless_above"]:
            continue  # see measure(): XLA cannot win here
        try:
            out[name] = train_throughput(depth, shape, batch, **runs[name])["images_per_sec"]
        except Exception:  # noqa: BLE001 -- e.g. XLA cannot compile here: absent, so never chosen
            pass
    return out


if __name__ == "__main__":
    print(json.dumps(_probe(json.loads(sys.argv[1]))))
