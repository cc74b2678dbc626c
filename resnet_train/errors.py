"""Errors a user can fix, and the exit codes the command-line tools use (README: "What happens
when things go wrong")."""

EXIT_USER_ERROR = 2  # bad input: the one-line message says what was wrong and how to fix it
EXIT_DIVERGED = 3  # the loss became NaN/Inf; the last good checkpoint is kept
EXIT_WORKER_LOST = 4  # multi-worker: another worker stopped or became unreachable; see its log
EXIT_PREEMPTED = 75  # SIGTERM/SIGINT: a checkpoint was written at the current step; rerun to continue
# 75 is EX_TEMPFAIL in sysexits.h ("try again later"): what a requeueing job script checks for.
# runtime.retry_exit_code replaces 75 and 4 (the stops a rerun continues) where a scheduler retries
# only its own codes: Kubeflow's restartPolicy: ExitCode retries 130, 137, 138 and 143.
RETRY_EXIT_CODES = range(4, 256)  # 0-3 mean done, a crash, bad input, diverged: never "try again"


def first_line(error: BaseException, limit: int | None = 200, tail: bool = False) -> str:
    """The first line of an exception's message (TensorFlow's OpError: its `message`), cut to
    `limit` characters from the start, or from the end with `tail` (where a path ends the line);
    the exception's type name when the message is empty."""
    text = (getattr(error, "message", None) or str(error)).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if limit is None or len(line) <= limit:
        return line
    return line[-limit:] if tail else line[:limit]


def exit_code(error: BaseException, retry_exit_code: int | None = None) -> int:
    """The exit code for `error`: `retry_exit_code` (runtime.retry_exit_code) for a stop that a rerun
    continues (preempted, a lost peer) when one is set, else the error's own."""
    if retry_exit_code in RETRY_EXIT_CODES and getattr(error, "rerun_continues", False):
        return retry_exit_code
    return getattr(error, "exit_code", EXIT_USER_ERROR)


class UserError(Exception):
    """Bad input: the message says what was wrong and how to fix it."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """An invalid configuration value (depth, batch size, ...)."""


class DataError(UserError):
    """A dataset that is missing, unreadable or incompatible."""


class RunDirError(UserError):
    """The run directory cannot be used: locked by another run, unwritable, or holding a run of
    another config."""


class TrainingDiverged(UserError):
    """A non-finite loss: training stopped; the message names the step and the last good checkpoint."""

    exit_code = EXIT_DIVERGED


class WorkerLost(UserError):
    """Multi-worker: a collective failed because another worker stopped (its own error is in its
    log) or became unreachable; rerunning every worker's command resumes the run."""

    exit_code = EXIT_WORKER_LOST
    rerun_continues = True


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the checkpoint at the current step is written."""

    exit_code = EXIT_PREEMPTED
    rerun_continues = True


class StoppedDuringSetUp(BaseException):
    """SIGTERM/SIGINT before training went on (data preparation, restore): nothing to save, the
    process stops at once. A BaseException, like KeyboardInterrupt, so that no `except Exception`
    on its way (e.g. the damage check of a checkpoint being read) takes it for a failure of its own."""

    exit_code = EXIT_PREEMPTED
    rerun_continues = True
