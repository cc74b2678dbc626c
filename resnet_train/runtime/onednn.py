"""runtime.onednn: TensorFlow's oneDNN CPU kernels on or off, decided before TensorFlow is imported.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is imported, and turns oneDNN on by itself
only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX. On AVX2-only x86 CPUs it leaves it off, though
oneDNN's convolutions win there too: ResNet-20, batch 128, float32, 2 cores, one run each:
324 vs 100 img/s on an AMD EPYC Zen 3 (AVX2) (issue 16), and 950 vs 390 on an AMD EPYC Zen 5
(docs/performance.md). `auto` therefore turns it on on any x86 CPU with AVX2 and FMA, and leaves
TensorFlow's own choice elsewhere (ARM, older x86). A TF_ENABLE_ONEDNN_OPTS the user exported wins
over `auto`; runtime.onednn=true/false win over both. No TensorFlow import here: the CLI calls
apply() before its first one.
"""

from __future__ import annotations

import os
import platform
import sys

from resnet_train.errors import ConfigError

ENV = "TF_ENABLE_ONEDNN_OPTS"
SETTINGS = ("auto", "true", "false")
_TRUE, _FALSE = ("1", "true"), ("0", "false")  # what TensorFlow's ReadBoolFromEnvVar accepts

_decided: dict[str, tuple[bool | None, str]] = {}  # setting -> the decision made before the import


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_identity() -> dict:
    """The CPU's model name and family from /proc/cpuinfo ("unknown" where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return {"model": fields.get("model name", platform.processor() or "unknown"), "family": fields.get("cpu family")}


def normalise(setting) -> str:
    """`true`/`false` from YAML arrive as booleans; `auto` as a string."""
    text = str(setting).lower() if isinstance(setting, (bool, str)) else repr(setting)
    if text not in SETTINGS:
        raise ConfigError(
            f"runtime.onednn must be one of auto, true, false (got {setting!r}): auto turns "
            f"oneDNN on on x86 CPUs with AVX2, where it is faster"
        )
    return text


def decide(setting, environ=None, flags=None, machine=None, measured=None) -> tuple[bool | None, str]:
    """(on, off or None for TensorFlow's own default; why). `measured`: runtime=auto's
    measurement on this machine ([on/off/None, why], tuning.py), used by `auto` before the CPU's rule."""
    setting = normalise(setting)
    environ = os.environ if environ is None else environ
    if setting != "auto":
        return setting == "true", f"runtime.onednn={setting}"
    value = environ.get(ENV)
    if value is not None and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE, f"{ENV}={value} in the environment"
    if measured and measured[0] is not None:
        return bool(measured[0]), f"runtime=auto measured this machine: {measured[1]}"
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("x86_64", "amd64") and {"avx2", "fma"} <= flags:
        return True, "runtime.onednn=auto: an x86 CPU with AVX2, where oneDNN's kernels are faster"
    return None, "runtime.onednn=auto: TensorFlow's own default on this CPU (not an x86 CPU with AVX2)"


def apply(setting, measured=None) -> str:
    """Sets TF_ENABLE_ONEDNN_OPTS for this process and its children when TensorFlow is not imported
    yet, and returns why oneDNN is on or off. Once TensorFlow is imported its choice is fixed: a
    later call reports the decision made before the import, or says that it came too late."""
    setting = normalise(setting)
    if "tensorflow" not in sys.modules:
        on, why = _decided[setting] = decide(setting, measured=measured)
        if on is not None:
            os.environ[ENV] = "1" if on else "0"
    elif setting in _decided:
        on, why = _decided[setting]
    else:
        on, why = decide(setting)
        if on is not None and on != enabled():
            why += (
                f", but TensorFlow was imported before in this process: it stays "
                f"{'on' if enabled() else 'off'} (set {ENV}={int(on)} before importing TensorFlow)"
            )
    return why


def enabled() -> bool:
    """Whether this process's TensorFlow runs oneDNN's kernels."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
