"""One training process per run directory: `<run>/.lock` holds the owner's host and PID.

Created with O_EXCL (atomic on local and NFS v3+ file systems), removed when the run ends, and
touched every HEARTBEAT_S seconds by a background thread while the run lives. A lock is stale, and
taken over with a warning, when its process is gone (same host, PID not alive), when it names this
very process (a restarted container often reuses the PID), or when its heartbeat stopped more than
STALE_AFTER_S ago (any host: e.g. a SLURM job requeued onto another node).
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
from pathlib import Path

from resnet_train.errors import RunDirError

log = logging.getLogger(__name__)
HEARTBEAT_S = 30
STALE_AFTER_S = 300


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / ".lock"
        self.held = False
        self._stop = threading.Event()

    def _stale(self, owner: dict, me: dict) -> str | None:
        """Why the existing lock is stale, or None while its owner may be alive."""
        host, pid = owner.get("host"), owner.get("pid")
        try:
            silent = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        if host == me["host"] and isinstance(pid, int):
            if pid == me["pid"]:
                return f"it names this process ({pid}): a restart"
            if not _alive(pid):
                return f"process {pid} on {host} is gone"
        if silent > STALE_AFTER_S:
            return f"its heartbeat stopped {silent:.0f} s ago (process {pid} on {host})"
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._owner()
                host, pid = owner.get("host"), owner.get("pid")
                why = self._stale(owner, me)
                if why:
                    log.warning("Removing a stale lock in %s (%s)", self.path.parent, why)
                    try:  # a rename, not unlink: of two runs taking over at once, one wins
                        self.path.replace(self.path.with_name(f".lock.stale.{os.getpid()}"))
                        self.path.with_name(f".lock.stale.{os.getpid()}").unlink()
                    except FileNotFoundError:
                        pass
                    continue
                who = f"process {pid} on {host}" if pid else "another process"  # alive, or silent < STALE_AFTER_S
                raise RunDirError(
                    f"{self.path.parent} is in use by {who} (lock file {self.path}): wait for it to finish, "
                    f"use another hydra.run.dir, or delete the lock file if that run is dead") from None
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR):
                    raise RunDirError(f"cannot write to the run directory {self.path.parent}: {e.strerror}; "
                                      f"choose another hydra.run.dir or free space") from None
                raise
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True).start()
            return self
        raise RunDirError(f"could not take the lock {self.path}: delete it if no run uses {self.path.parent}")

    def release(self) -> None:
        self._stop.set()
        if self.held and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
