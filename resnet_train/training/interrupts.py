"""SIGTERM (preemption, `scancel`, `kill`) and SIGINT (Ctrl-C) become a request to stop.

The training loop passes `stop.requested` into its next compiled call (one step by default), where
it is summed over every worker; then all of them write the checkpoint of that step and exit with
EXIT_PREEMPTED; rerunning the command continues from that exact step. A second Ctrl-C interrupts
at once (the checkpoint of the last epoch end or `checkpoint.every_steps` remains).
Before training starts (data preparation, restore, compilation: possibly hours for a first tfds
build) nothing would be saved, so a signal stops the process at once: waiting for the
first training call could outlast a preemption's grace period (StoppedDuringSetUp). Not under multi-worker training,
where every worker must stop at the same step (the first call agrees on it).
`request(reason)` asks the same from code in any thread, e.g. the run lock's heartbeat once another
process took the lock over.

SIGUSR2 is what SLURM sends a job launched by submitit (Hydra's submitit launcher) before its time
limit or a preemption: it stops the run like SIGTERM (the checkpoint of the current step, on
every worker), and then the handler that was there before ours, submitit's, is called as if the
signal had just arrived, so it requeues the job as usual; the requeued run continues from that step.
If that handler raises, its error is one logged line and the run ends as a stopped one (its state
saved, EXIT_PREEMPTED). A SIGUSR2 ignored when the run started (SIG_IGN) stays ignored.
"""

from __future__ import annotations

import logging
import signal
import threading

from resnet_train.errors import first_line

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
# What a scheduler sends to stop or warn a job; their default action would kill the process.
SCHEDULER_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


def stop_while_starting(signum, frame):
    """SIGTERM / SIGUSR2 before the run's own handlers exist (Python's and TensorFlow's imports, the
    config's checks: seconds). Their default action would end the process with 143 / 140, which
    a retry rule (docs/slurm/train.sbatch requeues on 75) reads as a failure: the job would be lost."""
    from resnet_train.errors import StoppedDuringSetUp

    raise StoppedDuringSetUp(
        f"stopped by {signal.Signals(signum).name} while starting, before anything was written; "
        f"run the same command again to continue"
    )


def catch_from_the_start() -> None:
    """The console script's first act: a scheduler's signal that still has its default action
    stops the process as a stopped run (EXIT_PREEMPTED) instead of killing it. One ignored or
    handled by what started us (SIG_IGN, a launcher's handler) is left as it is."""
    if threading.current_thread() is threading.main_thread():
        for sig in SCHEDULER_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, stop_while_starting)


def release_start_catch() -> None:
    """The defaults back where the start-up catch is still installed (the command returned or
    failed before a run took the signals over): a process that goes on, e.g. a notebook or a test
    calling the entry point, keeps no handler of ours."""
    if threading.current_thread() is threading.main_thread():
        for sig in SCHEDULER_SIGNALS:
            if signal.getsignal(sig) is stop_while_starting:
                signal.signal(sig, signal.SIG_DFL)


class StopRequests:
    def __init__(self, exit_during_set_up: bool = True):
        self.signal_name: str | None = None
        self._exit_during_set_up = exit_during_set_up
        self.reason: str | None = None  # set by request(), not by a signal
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None or self.reason is not None

    def request(self, reason: str) -> None:
        """Stops the run as a SIGTERM would, from any thread. A later first Ctrl-C still only asks."""
        self.reason = reason
        log.warning("%s: stopping after the current step", reason)  # the caller says what is saved

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signal_name = name
        if self._exit_during_set_up:
            from resnet_train.errors import StoppedDuringSetUp

            raise StoppedDuringSetUp(
                f"stopped by {name} during set-up, before training went on: no step was lost; "
                f"run the same command again to continue"
            )
        log.warning("%s received: saving a checkpoint after the current step, then exiting", name)

    def training_started(self) -> None:
        """From here a signal only asks: the training loop saves the current step, then stops."""
        self._exit_during_set_up = False

    def install(self) -> None:
        """(Re)installs the handlers. Called again once the strategy exists: under
        MultiWorkerMirroredStrategy TF's coordination service installs its own SIGTERM handler
        (a preemption notifier read only by TF's PreemptionCheckpointHandler), which would
        otherwise swallow the signal."""
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in SIGNALS:
                if sig == signal.SIGUSR2 and self._previous.get(sig, signal.getsignal(sig)) is signal.SIG_IGN:
                    self._previous[sig] = signal.SIG_IGN  # ignored by what started this run: it stays so
                    continue
                previous = signal.signal(sig, self._handle)
                # The start-up catch is no handler to restore or pass SIGUSR2 on to: the default.
                self._previous.setdefault(sig, signal.SIG_DFL if previous is stop_while_starting else previous)

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, exc_type, exc, traceback):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        chained = self._previous.get(signal.SIGUSR2)
        self._previous.clear()
        if self.signal_name == "SIGUSR2" and callable(chained):  # after our checkpoint: e.g. submitit's requeue
            if exc is not None:  # what was saved: the chained handler may exit before the CLI says it
                log.warning("%s", exc)
            log.warning("Passing SIGUSR2 on to the handler installed before this run's (a job scheduler's requeue)")
            try:
                chained(signal.SIGUSR2, None)
            except Exception as e:  # noqa: BLE001 -- not ours to fix: the run's state is saved either way
                log.error(
                    "The SIGUSR2 handler installed before this run's failed (%s: %s); the run is stopped, its "
                    "state saved, as after any SIGUSR2",
                    type(e).__name__,
                    first_line(e),
                )
