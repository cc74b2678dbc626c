"""Where and how a run computes: devices, strategy and precision (devices.py), oneDNN, runtime=auto's
measured levers (tuning.py, probe.py), the multi-worker cluster. No TensorFlow import here: cli.py
sets oneDNN and the thread pools before TensorFlow starts. environ_restored(): what a run in a
caller's process (a notebook, a test) set in os.environ is undone when it returns or raises."""

from __future__ import annotations

import contextlib
import os
import sys

# Read by TensorFlow once, as it starts (oneDNN at its import, the thread pools at its first op,
# its C++ log level at its first message); never again in that process.
TF_START_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_CPP_MIN_LOG_LEVEL")


@contextlib.contextmanager
def environ_restored():
    """os.environ as it was on entry, once the block returns or raises. A context manager and a
    decorator: the console entry points called as functions and train_and_evaluate use it."""
    before, tf_started = dict(os.environ), "tensorflow" in sys.modules
    try:
        yield
    finally:
        # If TensorFlow started inside, it read TF_START_ENV then and runs with them for the rest of
        # this process: they stay, so that os.environ keeps telling this process's later runs and its
        # children what this TensorFlow runs with. If it started before, it never read what was set.
        keep = TF_START_ENV if not tf_started and "tensorflow" in sys.modules else ()
        for name in [n for n in os.environ if n not in before and n not in keep]:
            del os.environ[name]
        for name, value in before.items():
            if name not in keep and os.environ.get(name) != value:
                os.environ[name] = value
