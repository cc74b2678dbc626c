"""train.log held back until a run's checks pass, so that a refused rerun leaves an existing run's
log as it was."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path


class HeldLog:
    """Holds back the log lines meant for files in the run directory (train.log) until the run's
    checks pass, so that a refused rerun does not append to an existing run's log. On the
    terminal they appear at once. `release()` writes them; `close(failed=True)` drops them when the
    log file existed before (an existing run), else writes them (a new run's log of its attempt)."""

    def __init__(self, workdir: Path):
        root, workdir = logging.getLogger(), Path(workdir).resolve()
        self._swaps = []
        for handler in list(root.handlers):
            name = getattr(handler, "baseFilename", None)
            if name and Path(name).resolve().is_relative_to(workdir):
                memory = logging.handlers.MemoryHandler(
                    1_000_000, flushLevel=logging.CRITICAL + 1, target=handler, flushOnClose=False
                )
                memory.setLevel(handler.level)
                memory.setFormatter(handler.formatter)
                root.removeHandler(handler)
                root.addHandler(memory)
                self._swaps.append((memory, handler, Path(name).exists()))

    def release(self) -> None:
        self._restore(write=True)

    def close(self, failed: bool) -> None:
        self._restore(write=not failed)

    def _restore(self, write: bool) -> None:
        root = logging.getLogger()
        for memory, handler, existed in self._swaps:
            if write or not existed:
                memory.flush()
            memory.buffer.clear()
            root.removeHandler(memory)
            root.addHandler(handler)
        self._swaps = []
