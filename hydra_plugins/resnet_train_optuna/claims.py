"""Which invocation of a search runs which trial, so that several run one study at once (other
processes, other machines sharing its storage) without running a trial twice or more than n_trials.

- Trial numbers come from the storage (study.ask: an appended journal record, a database row), so
  two invocations never get the same number; each trial runs in member <sweep dir>/<its number>.
- Counting what the study holds (complete, pruned, running) and asking for the missing trials
  happens under an exclusive lock (`locked`, an fcntl.flock on <journal>.ask-lock beside a journal
  file, or <sweep dir>/optuna_study.ask-lock beside a database's study), so two invocations never
  ask past n_trials. flock needs a file system whose locks work across its clients (local, NFSv4,
  Lustre/GPFS with locking on); the kernel drops it when its process dies, so a killed invocation
  cannot leave it held.
- Every trial an invocation asks for or takes over gets its owner as a system attribute (OWNER:
  host, boot id, PID namespace, PID and start time, as run_lock.py records a run's owner) and,
  every HEARTBEAT_S while it runs, a heartbeat (BEAT). A RUNNING trial is resumed only by an
  invocation that finds its owner dead, judged as run_lock.py judges a lock: on this machine its
  process is gone (or its PID is another process now); elsewhere its heartbeat is older than
  STALE_AFTER_S (clocks must agree to well within that). The takeover is made under the same lock,
  so one invocation claims it. A trial with no owner (an earlier version's, or asked by hand) is free.
- Without a lock the invocations share (a database reached from sweep directories on different
  machines), two may count at the same moment: the trial numbered past n_trials is then told FAIL
  with SURPLUS set, never run (`surplus`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from pathlib import Path

from resnet_train.training.run_lock import HEARTBEAT_S, owner_record, stale_reason

log = logging.getLogger(__name__)
OWNER = "resnet_train:owner"
BEAT = "resnet_train:owner_beat"
SURPLUS = "resnet_train:surplus"
COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  # what n_trials caps


def lock_path(storage_spec, sweep_dir) -> Path | None:
    """The file whose flock serialises the invocations' claims (None for an in-memory study)."""
    spec = str(storage_spec or "")
    if spec.strip() in ("", "None", "null"):
        return None
    if "://" in spec:
        return Path(sweep_dir) / "optuna_study.ask-lock"
    return Path(spec).expanduser().with_name(Path(spec).name + ".ask-lock")


class Claims:
    def __init__(self, storage, lock: Path | None):
        self.storage, self.lock = storage, lock
        self.me = owner_record()
        self.owned: dict[int, int] = {}  # trial number -> trial id, while this invocation runs it
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def locked(self):
        if self.lock is None:
            yield
            return
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def claim(self, trial) -> None:
        if self.storage is None:
            return
        self.storage.set_trial_system_attr(trial._trial_id, OWNER, self.me)
        self.storage.set_trial_system_attr(trial._trial_id, BEAT, time.time())
        with self._guard:
            self.owned[trial.number] = trial._trial_id

    def release(self, number: int) -> None:
        with self._guard:
            self.owned.pop(number, None)

    def orphaned(self, trial) -> bool:
        """Whether a RUNNING trial's owner is dead (or it has none): it may be taken over."""
        owner = trial.system_attrs.get(OWNER)
        if not isinstance(owner, dict):
            return True
        if owner.get("token") == self.me["token"]:
            return False
        silent = time.time() - float(trial.system_attrs.get(BEAT) or owner.get("since") or 0)
        why = stale_reason(owner, self.me, silent)
        if why:
            log.info(f"Trial {trial.number}'s search is gone ({why}): taking it over")
        return why is not None

    def surplus(self, trial, trials: list, n_trials: int) -> bool:
        """Whether `trial` is past n_trials (asked by two invocations at once without a shared lock)."""
        ahead = sum(t.number < trial.number and t.state.name in COUNTED for t in trials)
        if ahead < n_trials:
            return False
        log.warning(f"Trial {trial.number} is past n_trials={n_trials} (another search asked at once): not run")
        self.storage.set_trial_system_attr(trial._trial_id, SURPLUS, True)
        self.release(trial.number)
        return True

    @contextlib.contextmanager
    def beating(self):
        """A heartbeat on this invocation's running trials, for searches on other machines."""
        stop = threading.Event()

        def beat():
            while not stop.wait(HEARTBEAT_S):
                with self._guard:
                    owned = list(self.owned.items())
                for number, trial_id in owned:
                    try:
                        self.storage.set_trial_system_attr(trial_id, BEAT, time.time())
                    except Exception as e:  # noqa: BLE001 -- told meanwhile: nothing to keep alive
                        log.debug(f"Trial {number}: no heartbeat ({e})")
                        self.release(number)

        thread = threading.Thread(target=beat, name="optuna-trial-heartbeat", daemon=True)
        if self.storage is not None:
            thread.start()
        try:
            yield self
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
