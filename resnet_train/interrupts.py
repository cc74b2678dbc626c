"""SIGTERM (preemption, `scancel`, `kill`) and SIGINT (Ctrl-C) become a request to stop.

The training loop passes `stop.requested` into its next compiled call (one step by default), where
it is summed over every worker; then all of them write the checkpoint of that step and exit with
EXIT_PREEMPTED; rerunning the command continues from that exact step. A second Ctrl-C interrupts at once (the checkpoint of the last epoch end or
`checkpoint.every_steps` remains).
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signal_name = name
        log.warning("%s received: saving a checkpoint after the current step, then exiting", name)

    def install(self) -> None:
        """(Re)installs the handlers. Called again once the strategy exists: under
        MultiWorkerMirroredStrategy TF's coordination service installs its own SIGTERM handler
        (a preemption notifier read only by TF's PreemptionCheckpointHandler), which would
        otherwise swallow the signal."""
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in SIGNALS:
                previous = signal.signal(sig, self._handle)
                self._previous.setdefault(sig, previous)

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
