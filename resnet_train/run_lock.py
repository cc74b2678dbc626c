"""One training process per run directory: `<run>/.lock` holds the owner's host and PID.

Created with O_EXCL (atomic on local and NFS v3+ file systems), removed when the run ends. A lock
whose process is gone (same host, PID not alive) is stale: taken over with a warning. A lock from
another host cannot be checked from here; the error says how to remove it if that run is dead.
Only the chief locks: the workers of one multi-worker run share its directory.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from resnet_train.errors import RunDirError

log = logging.getLogger(__name__)


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
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    log.warning("Removing a stale lock in %s (process %d on %s is gone)", self.path.parent, pid, host)
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"process {pid} on {host}" if pid else "another process"
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
            return self
        raise RunDirError(f"could not take the lock {self.path}: delete it if no run uses {self.path.parent}")

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
