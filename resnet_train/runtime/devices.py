"""Where and how the computation runs: devices, tf.distribute strategy, precision, seeds.

runtime=auto          MirroredStrategy over all GPUs when there are two or more, else one device
runtime=one_device    one device (the first GPU, else the CPU)
runtime=mirrored      MirroredStrategy over runtime.devices (default: all GPUs, or the
                      runtime.cpu_replicas logical CPUs)
runtime=multi_worker  MultiWorkerMirroredStrategy from TF_CONFIG (one process per host)
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import keras
import tensorflow as tf

from resnet_train.errors import ConfigError, first_line
from resnet_train.runtime import cluster, onednn
from resnet_train.runtime.onednn import cpu_flags  # runtime.cpu_flags: patched by tests

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    strategy: tf.distribute.Strategy
    precision: str  # the resolved policy name
    is_chief: bool  # the process that writes checkpoints, summaries and results

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


# ---- devices ----------------------------------------------------------------------------------
def split_cpu(replicas: int) -> None:
    """Splits the CPU into `replicas` logical devices (for MirroredStrategy without GPUs).

    Must run before TensorFlow initialises its devices; a second call with the same number is a
    no-op, a different number after initialisation is a clear error."""
    if replicas <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have == replicas:
            return
        raise ConfigError(
            f"runtime.cpu_replicas={replicas}, but TensorFlow already started with {have} CPU device(s) "
            f"in this process: set it before anything else runs (a fresh process)"
        ) from None


def existing_devices(requested, available) -> list[str]:
    """`requested` (runtime.devices) as given, after checking that each exists here: TF's soft
    placement would otherwise run a strategy "over GPU:7" on the CPU, the log naming GPU:7."""
    have = {}
    for name in available:
        spec = tf.DeviceSpec.from_string(name)
        have[(spec.device_type.upper(), spec.device_index)] = name
    missing = []
    for name in requested:
        try:
            spec = tf.DeviceSpec.from_string(str(name))
        except (ValueError, TypeError):
            spec = None
        if spec is None or spec.device_type is None or (spec.device_type.upper(), spec.device_index or 0) not in have:
            missing.append(str(name))
    if missing:
        raise ConfigError(
            f"runtime.devices: {', '.join(missing)} is not a device of this machine, which has "
            f"{', '.join(sorted(have.values()))} (omit runtime.devices to use every GPU, or the CPU)"
        )
    return [str(d) for d in requested]


def one_device(device: str) -> tf.distribute.Strategy:
    """The strategy for one device: OneDeviceStrategy on a GPU; on the CPU, TensorFlow's default
    strategy (no placement of its own: TF's default placement is that CPU). Why: with oneDNN off,
    a ResNet-20 step under OneDeviceStrategy("/cpu:0") took 1.85x as long as the same step under
    the default strategy (AMD EPYC Zen 5, 2 cores, batch 128: 0.58 vs 0.31 s; 12.9M vs 1.2M page
    faults over 45 steps, the step's buffers freshly mapped each time), which made `resnet-train`
    0.55x its own trainer measured alone; with oneDNN on the two are within 4%. Same kernels, same
    maths: only where buffers come from differs (tests/test_runtime.py compares the weights). The
    first CPU only: TF's default placement; runtime.devices=["/cpu:1"] keeps OneDeviceStrategy."""
    spec = tf.DeviceSpec.from_string(device)
    if (spec.device_type or "").upper() == "CPU" and not spec.device_index and not tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    return tf.distribute.OneDeviceStrategy(device)


def _is_default(strategy: tf.distribute.Strategy) -> bool:
    return strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()


def strategy_devices(strategy: tf.distribute.Strategy) -> list[str]:
    """The devices a strategy computes on (the default strategy's: this process's CPU)."""
    if _is_default(strategy):
        return [tf.config.list_logical_devices("CPU")[0].name]
    return list(strategy.extended.worker_devices)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if _is_default(strategy):
        return "default (one device)"
    return type(strategy).__name__


class TFConfigResolver(tf.distribute.cluster_resolver.TFConfigClusterResolver):
    """TF_CONFIG as runtime/cluster.py reads it: AI Platform's `master` becomes the `chief` that
    TensorFlow's strategy knows (it refuses a `master` job). Still a TFConfigClusterResolver, so the
    strategy counts this host's GPUs itself, as with TF_CONFIG read directly."""

    def __init__(self):
        conf = cluster.spec()
        super().__init__(task_type=conf["task"]["type"], task_id=conf["task"]["index"])
        self._jobs = conf["cluster"]

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._jobs)


def mirrored(devices: list[str], cross_device_ops=None) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy whose collectives are its own. TensorFlow numbers every MirroredStrategy's
    collective groups from the same key, so a second strategy over the same devices in one process
    (the next job of a `-m` sweep under Hydra's in-process launcher, on several GPUs) reuses the
    first's collective instances: "Shape mismatch in the collective instance 100", and every later
    collective of the process aborted. TensorFlow's own tests move the key base on per strategy
    (strategy_combinations); so do we, by a step far above one strategy's group count."""
    tf.distribute.MirroredStrategy._collective_key_base += _KEY_BASE_STEP
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)


_KEY_BASE_STEP = 100_000


def make_strategy(name: str, devices=None, cpu_replicas: int = 1):
    """`name`, `devices`, `cpu_replicas`: runtime.strategy, .devices, .cpu_replicas, checked by config.validate."""
    if name == "multi_worker":
        if cluster.task() is None:
            raise ConfigError("runtime=multi_worker needs TF_CONFIG (see README: several hosts)")
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=TFConfigResolver())
    split_cpu(cpu_replicas)
    for gpu in tf.config.list_physical_devices("GPU"):
        try:  # take GPU memory as needed: parallel sweep members can share a machine's GPUs
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if devices:
        devices = existing_devices(devices, gpus + cpus)
    elif gpus:
        devices = gpus
    else:
        devices = cpus[: max(1, cpu_replicas)]
    if name == "one_device" or (name == "auto" and len(devices) < 2):
        return one_device(devices[0])
    if name == "auto" and not gpus and cpu_replicas <= 1:
        return one_device(devices[0])
    if gpus and len(devices) > 1:
        return mirrored(devices)
    # CPU replicas: NCCL is for GPUs; reduce on the host.
    return mirrored(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


# ---- precision --------------------------------------------------------------------------------
def auto_precision() -> tuple[str, str]:
    """(policy, reason). float16 on GPUs with tensor cores (compute capability >= 7.0), bfloat16 on
    CPUs with native bfloat16 arithmetic (AMX or AVX512-BF16), float32 otherwise."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        if capability and tuple(capability) >= (7, 0):
            return "mixed_float16", f"GPU compute capability {capability[0]}.{capability[1]} >= 7.0"
        return "float32", f"GPU compute capability {capability} < 7.0 (no tensor cores)"
    flags = cpu_flags()
    native = sorted(flags & {"amx_bf16", "avx512_bf16"})
    if native and not onednn.enabled():
        # Only oneDNN's kernels use the CPU's bfloat16 instructions: without them ResNet-20 ran
        # 48 img/s in bfloat16 vs 390 in float32 (AMD EPYC Zen 5, avx512_bf16).
        return "float32", f"CPU has {' and '.join(native)}, but oneDNN's kernels are off (runtime.onednn)"
    if native:
        return "mixed_bfloat16", f"CPU has {' and '.join(native)}"
    return "float32", "no GPU and no native bfloat16 on this CPU"


def resolve_precision(precision: str) -> tuple[str, str]:
    """(policy, reason) for runtime.precision (one of config.PRECISIONS, checked by config.validate)."""
    if precision == "auto":
        return auto_precision()
    return precision, "asked for"


def check_xla() -> None:
    """runtime.xla=true on a build or device without XLA: one clear error, not a failure deep
    inside the first compiled step."""
    try:
        tf.function(lambda x: x * 2.0, jit_compile=True)(tf.constant(1.0))
    except (tf.errors.OpError, ValueError, NotImplementedError) as e:
        first = first_line(e, 200)
        raise ConfigError(
            f"runtime.xla=true, but XLA cannot compile on this platform ({first}): use runtime.xla=false"
        ) from None


# ---- all of it --------------------------------------------------------------------------------
def configure(
    seed: int,
    deterministic: bool = False,
    strategy: str = "one_device",
    precision: str = "float32",
    devices=None,
    cpu_replicas: int = 1,
) -> Runtime:
    """Devices, strategy, precision policy and seeds, logged with the reasons for each choice."""
    dist = make_strategy(strategy, devices, cpu_replicas)
    policy, reason = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)  # Python, NumPy and TF (model initialisation)
    if deterministic:
        # Bit-identical reruns (and resumed == uninterrupted), at some cost in speed.
        tf.config.experimental.enable_op_determinism()
    is_chief = cluster.is_chief() if isinstance(dist, tf.distribute.MultiWorkerMirroredStrategy) else True
    log.info(
        "Strategy %s over %d replica(s): %s; precision %s (%s)",
        strategy_name(dist),
        dist.num_replicas_in_sync,
        ", ".join(strategy_devices(dist)),
        policy,
        reason,
    )
    return Runtime(dist, policy, is_chief)


# ---- hardware yardstick -------------------------------------------------------------------------
def matmul_flops(dtype: str = "float32", n: int = 2048, repeats: int = 20) -> float:
    """The machine's measured dense matrix-multiply rate (FLOP/s) for `dtype`: the MFU yardstick."""
    a = tf.random.uniform((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)

    @tf.function
    def chain(x):
        for _ in range(repeats):
            x = tf.matmul(x, a) * 0.001
        return x

    chain(a).numpy()  # trace and warm up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        chain(a).numpy()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def _device_key(dtype: str) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")
    else:
        name = f"{onednn.cpu_identity()['model']} x{os.cpu_count()}"
    return f"{name}|{dtype}"


def peak_flops(precision: str) -> float:
    """The measured matmul rate (FLOP/s) of this machine at the policy's compute dtype, cached in
    $XDG_CACHE_HOME/resnet_train/peak_flops.json: the yardstick of model FLOPs utilisation."""
    from pathlib import Path

    dtype = "bfloat16" if "bfloat16" in precision else "float16" if "float16" in precision else "float32"
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "resnet_train" / "peak_flops.json"
    key = _device_key(dtype)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        n = 4096 if tf.config.list_physical_devices("GPU") else 1024
        known[key] = matmul_flops(dtype, n=n, repeats=10)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=2))
        except OSError:
            pass  # a read-only home: measure again next time
    return known[key]
