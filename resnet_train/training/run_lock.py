"""One training process per run directory: `<run>/.lock` names the process that owns it.

The lock's record is written to a file of its own, then hard-linked to `.lock` (atomic like O_EXCL
on local and NFS v3+ file systems; O_EXCL where hard links are refused), and removed when the run
ends. While the run lives a heartbeat thread touches it every HEARTBEAT_S seconds, after checking
that it still holds this acquisition's random token: if another process took the lock over, the
heartbeat stops and calls `on_lost` (the training stops) instead of letting two runs write here.

A lock is stale, and taken over with a warning, when
- its owner ran on this machine (same boot id and PID namespace) and that process is gone, or its PID
  now belongs to another process (another start time: e.g. a restarted container). A live owner
  keeps its lock however old its heartbeat: a stopped run (Ctrl-Z, `scontrol suspend`) resumes;
- its owner ran elsewhere (another node, or another container with the same host name) and its
  heartbeat stopped more than STALE_AFTER_S ago (e.g. a SLURM job requeued onto another node).
An empty or cut-short lock (its writer killed before it wrote; only an earlier version or a file
system without hard links leaves one) is stale at once. Locks written before boot id, PID namespace
and start time were recorded are judged as they used to be (host name, PID, heartbeat). A takeover
moves the stale lock aside and goes on only if what moved is what was judged.
Only the chief locks: the workers of one multi-worker run share its directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from resnet_train.errors import RunDirError

log = logging.getLogger(__name__)
HEARTBEAT_S = 30
STALE_AFTER_S = 300


def _before_takeover() -> None:
    """Runs between judging a lock stale and moving it aside: where tests force two processes."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _process(pid: int) -> tuple[str, int] | None:
    """State and start time (clock ticks after boot) of a process in this PID namespace, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ")"
        return fields[0], int(fields[19])  # fields 3 and 22 in proc(5)
    except (OSError, ValueError, IndexError):
        return None


def owner_record() -> dict:
    """This process as a lock's owner: host, PID, boot id, PID namespace, start time (what
    stale_reason judges by; the Optuna sweeper's trial claims record the same)."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    process = _process(os.getpid())
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot_id": boot_id,
        "pid_ns": pid_ns,
        "start_time": process and process[1],
        "token": uuid.uuid4().hex,
        "since": time.time(),
    }


def _who(owner: dict) -> str:
    pid, host = owner.get("pid"), owner.get("host")
    return f"process {pid} on {host}" if pid else "another process"


def stale_reason(owner: dict, me: dict, silent: float) -> str | None:
    """Why the lock `owner` (heartbeat `silent` seconds ago) is stale, or None while it may be held."""
    if not owner:  # this version never shows a lock before its record is in it (RunLock._create)
        return "it is empty or cut short: the process creating it was killed before it wrote its record"
    pid = owner.get("pid")
    ids = ("boot_id", "pid_ns")
    if all(owner.get(k) and me[k] for k in ids):
        here = all(owner[k] == me[k] for k in ids)
    else:  # an old lock file, or no /proc: PIDs are trusted across one host name, as they used to be
        here = owner.get("host") == me["host"]
    if here and isinstance(pid, int) and pid > 0:
        now = _process(pid)
        if not _alive(pid) or (now and now[0] in "ZX"):  # a zombie writes no more
            return f"{_who(owner)} is gone"
        started = owner.get("start_time")
        if started is not None and now is not None:
            if started != now[1]:
                return f"PID {pid} is now another process (a restart)"
            return None  # its process is alive, however old the heartbeat: a stopped run
        if pid == me["pid"]:
            return f"it names this process ({pid}): a restart"
    if silent > STALE_AFTER_S:
        return f"its heartbeat stopped {silent:.0f} s ago ({_who(owner)})"
    return None


def _parse(content: bytes) -> dict:
    try:
        owner = json.loads(content)
    except ValueError:  # being written, or not a lock record
        return {}
    return owner if isinstance(owner, dict) else {}


def _read(path: Path) -> tuple[dict, os.stat_result, bytes] | None:
    """The record, status and bytes of one and the same file (None if there is none)."""
    try:
        with open(path, "rb") as f:
            content = f.read()
            return _parse(content), os.fstat(f.fileno()), content
    except FileNotFoundError:
        return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_mtime_ns)


class RunLock:
    def __init__(self, run_dir, on_lost: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / ".lock"
        self.on_lost = on_lost
        self.lost: str | None = None  # why the lock was lost while the run lived
        self.held = False
        self.record: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self, record: dict) -> bool:
        """Makes `record` the lock unless one exists: written to a file of its own, then hard-linked
        to `.lock` (fails if it exists, like O_EXCL), so a lock is never seen empty or half-written."""
        staged = self.path.with_name(f".lock.{uuid.uuid4().hex[:12]}.new")
        try:
            with open(staged, "x") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            os.link(staged, self.path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            return self._create_without_links(record)  # a file system without hard links
        finally:
            staged.unlink(missing_ok=True)
        return True

    def _create_without_links(self, record: dict) -> bool:
        """O_EXCL, then the record: another process may see the file empty meanwhile and take it
        for a killed writer's, so the lock is this run's only if it still holds our token after."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)  # (if this fails, the empty lock is stale at once)
        now = _read(self.path)
        return bool(now) and now[0].get("token") == record["token"]

    def _take_over(self, judged: tuple[dict, os.stat_result, bytes], aside: Path) -> None:
        """Moves the lock judged stale to `aside`. If what moved is not what was judged, another
        process took over first and this moved its fresh lock: that lock is put back."""
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another process moved it first
            return
        moved = _read(aside)
        if moved and _same_file(moved[1], judged[1]) and moved[2] == judged[2]:
            return
        log.warning("Another process took over the lock in %s first; judging it again", self.path.parent)
        try:
            os.link(aside, self.path)  # never replaces a lock created meanwhile
        except FileExistsError:
            pass  # its owner's heartbeat finds another token and stops that run
        except OSError:  # no hard links on this file system: the same record, as a new file
            if moved and self._create(moved[0]):
                os.utime(self.path, ns=(moved[1].st_atime_ns, moved[1].st_mtime_ns))

    def acquire(self) -> RunLock:
        me = owner_record()
        moved_aside = []  # kept until this has its own lock, so that its lock cannot reuse their inodes
        try:
            for attempt in range(3):  # a lock that changed during a takeover is judged again
                if self._create(me):
                    break
                judged = _read(self.path)
                if judged is None:
                    continue
                why = stale_reason(judged[0], me, time.time() - judged[1].st_mtime)
                if why is None:
                    raise RunDirError(
                        f"{self.path.parent} is in use by {_who(judged[0])} (lock file {self.path}): wait for it "
                        f"to finish, use another hydra.run.dir, or delete the lock file if that run is dead"
                    )
                log.warning("Removing a stale lock in %s (%s)", self.path.parent, why)
                _before_takeover()
                moved_aside.append(self.path.with_name(f".lock.stale.{me['pid']}.{me['token'][:8]}.{attempt}"))
                self._take_over(judged, moved_aside[-1])
            else:
                raise RunDirError(f"could not take the lock {self.path}: delete it if no run uses {self.path.parent}")
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR):
                raise RunDirError(
                    f"cannot write to the run directory {self.path.parent}: {e.strerror}; "
                    f"choose another hydra.run.dir or free space"
                ) from None
            raise
        finally:
            for path in moved_aside:
                path.unlink(missing_ok=True)
        self.record, self.held, self.lost = me, True, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> str | None:
        """Touches the lock if it is still this run's; otherwise says who took it."""
        for _ in range(2):
            try:
                with open(self.path, "rb") as f:
                    owner = _parse(f.read())
                    if owner.get("token") != self.record["token"]:
                        return (
                            f"the lock {self.path} was taken over by {_who(owner)}, which judged this run "
                            f"stale: stopping so that two runs do not write into {self.path.parent}"
                        )
                    os.utime(f.fileno())  # this very file, even if it was replaced since the check
                    return None
            except FileNotFoundError:  # deleted by hand or a cleanup: this run still owns the directory
                if self._create(self.record):
                    log.warning("The lock %s was deleted while the run lives: created it again", self.path)
                    return None
        raise FileNotFoundError(errno.ENOENT, "the lock keeps disappearing", str(self.path))

    def _heartbeat(self) -> None:
        confirmed = time.monotonic()
        while not self._stop.wait(HEARTBEAT_S):
            try:
                reason = self._beat()
                confirmed = time.monotonic()
            except OSError as e:
                # A passing file-system glitch must not stop the run, but after STALE_AFTER_S without
                # a heartbeat another node takes the lock over: stop well before that.
                unconfirmed = time.monotonic() - confirmed
                log.warning("Cannot check the lock %s for %.0f s: %s", self.path, unconfirmed, e)
                if unconfirmed <= STALE_AFTER_S / 2:
                    continue
                reason = (
                    f"the lock {self.path} could not be checked for {unconfirmed:.0f} s ({e}): another "
                    f"run may take it over; stopping so that two runs do not write into {self.path.parent}"
                )
            if reason:
                self.lost, self.held = reason, False
                log.error("Lost the run lock: %s", reason)
                if self.on_lost:
                    self.on_lost(reason)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join()  # no beat re-creates the lock after it is removed below
        try:
            current = _read(self.path)
            if self.held and current and current[0].get("token") == self.record["token"]:
                self.path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("Could not remove the lock %s: %s", self.path, e)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
