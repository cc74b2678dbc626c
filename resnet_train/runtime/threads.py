"""runtime.threads: TensorFlow's two thread pools (inter-op, intra-op), sized through the variables
TensorFlow reads when it starts, so the CLI applies them before TensorFlow's import."""

from __future__ import annotations

import os

from resnet_train.errors import ConfigError

THREADS_ENV = ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS")  # read by TensorFlow when it starts


def shown(value) -> str:
    if isinstance(value, (str, bool, int, float)) or value is None:
        return str(value).lower()
    return "[" + ",".join(str(v) for v in value) + "]"  # threads: a list (or Hydra's ListConfig)


def normalise(setting):
    """runtime.threads as "auto", "default" or [inter_op, intra_op]; anything else is refused."""
    if isinstance(setting, str) and setting.lower() in ("auto", "default"):
        return setting.lower()
    pools = None if isinstance(setting, (str, bytes, int, float)) or setting is None else list(setting)
    if (
        not pools
        or len(pools) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pools)
    ):
        raise ConfigError(
            f"runtime.threads must be auto, default or [inter_op, intra_op] thread counts, 0 for "
            f"TensorFlow's default (got {shown(setting)}); e.g. runtime.threads=[1,2]"
        )
    return pools


def apply(setting, measured=None, environ=None) -> str:
    """Sizes TensorFlow's thread pools for this process before TensorFlow starts, through the
    variables it reads then (TF_NUM_INTEROP_THREADS, TF_NUM_INTRAOP_THREADS); returns why.
    `setting`: runtime.threads (auto | default | [inter_op, intra_op], 0 = TensorFlow's default for
    that pool); `measured`: runtime=auto's [choice, why]. Exported variables win over auto."""
    environ = os.environ if environ is None else environ
    setting = normalise(setting)
    why = f"runtime.threads={shown(setting)}"
    if setting == "auto":
        exported = [f"{name}={environ[name]}" for name in THREADS_ENV if name in environ]
        if exported:
            return _said(f"{' '.join(exported)} exported")
        setting, why = (measured[0], f"measured: {measured[1]}") if measured else ("default", "not tuned")
    pools = [0, 0] if setting == "default" else [int(n) for n in setting]
    for name, n in zip(THREADS_ENV, pools):
        if n:
            environ[name] = str(n)
        else:
            environ.pop(name, None)
    return _said(f"{why}: {_pools(pools)}")


def in_effect() -> str:
    """The thread pools TensorFlow started with in this process, and why (for the run's log)."""
    if _applied:
        return _applied
    exported = [f"{name}={os.environ[name]}" for name in THREADS_ENV if name in os.environ]
    return f"{' '.join(exported)} exported" if exported else _pools([0, 0])


_applied = None  # apply's answer in this process


def _said(why: str) -> str:
    global _applied
    _applied = why
    return why


def _pools(pools) -> str:
    if not any(pools):
        return "TensorFlow's default, one per core in each pool"
    return f"{pools[0] or 'default'} inter-op, {pools[1] or 'default'} intra-op"
