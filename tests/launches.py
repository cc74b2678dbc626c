"""The suite's launches of our console scripts and of `python -c` / `python -m`, forked from a server
that imported TensorFlow once, instead of each a new interpreter importing it again.

On 2 cores of an AMD EPYC Zen 3 a new process spends ~9 s of CPU importing TensorFlow, Keras,
Hydra, MLflow and W&B before it does anything; the suite launches over a hundred. A forked launch
is still a process of its own (its own PID, signals, exit status, file descriptors, environment,
working directory and TensorFlow runtime: the server imports TensorFlow but never starts its
runtime or lists a device, so each launch starts its own, as a new process would) and ends as
Python ends a process: its exit code, atexit handlers and flushed files.

`popen(args, **kw)` and `run(args, **kw)` take subprocess's arguments and return what it returns.
A launch goes to the server only where a fork is the same as a new process; otherwise (anything but
our interpreter or console scripts, preexec_fn, another user, an environment that differs in a
variable read when modules are imported) it is a subprocess as before. `fresh=True` asks for a new
interpreter: tests about what a new process imports or prints at start-up.

Forked launches do not carry the test's mark in /proc's copy of their environment (it is the
server's); `outliving(mark)` finds them instead (their children, which exec, carry it as usual)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points
from pathlib import Path

import leaks

BIN = Path(sys.executable).parent
# What a forked launch may set differently from the server: variables read when they are used, after
# the imports the server did (a cluster's TF_CONFIG, thread pools read when the runtime starts).
PER_LAUNCH = (
    leaks.TEST_MARK,
    "PYTEST_CURRENT_TEST",
    "TMPDIR",
    "TF_CONFIG",
    "TF_NUM_INTEROP_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)
PER_LAUNCH_PREFIXES = ("SLURM_", "MLFLOW_", "WANDB_", "HYDRA_", "RESNET_TEST_")
UNFORKABLE = ("preexec_fn", "shell", "pass_fds", "user", "group", "extra_groups", "executable")

SERVER = textwrap.dedent("""
    import importlib, os, runpy, select, socket, sys, tempfile, types
    # TensorFlow's start-up lines (before any log level applies) go nowhere; then what every launch imports.
    devnull, saved = os.open(os.devnull, os.O_WRONLY), os.dup(2)
    os.dup2(devnull, 2)
    import tensorflow, keras, hydra, mlflow.tracking, wandb, matplotlib.pyplot
    from resnet_train import cli
    from resnet_train.cli import tools
    from resnet_train.training import loop
    from tensorflow.python.eager import context
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
    # A started runtime (its thread pools) would not survive a fork: none may exist here.
    assert context._context is None or context._context._context_handle is None, "TensorFlow's runtime started"

    def serve(path):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        print("ready", flush=True)
        children = {}  # pidfd -> (pid, connection)
        while True:
            ready, _, _ = select.select([0, listener, *children], [], [])
            for fd in ready:
                if fd == 0:  # the suite closed our stdin: it is ending
                    os._exit(0)
                if fd is listener:
                    conn, _ = listener.accept()
                    header, fds, _, _ = socket.recv_fds(conn, 16, 3)
                    while len(header) < 16:  # a fixed-size header: the body's length
                        header += conn.recv(16 - len(header))
                    size, body = int(header), b""
                    while len(body) < size:
                        body += conn.recv(size - len(body))
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:  # the launch: the rest of this process is the launched program
                        for own in (listener, conn):
                            own.close()
                        for own, (_, other) in children.items():
                            os.close(own)
                            other.close()
                        return body, fds
                    for received in fds:
                        os.close(received)
                    conn.sendall(b"%d\\n" % pid)
                    children[os.pidfd_open(pid)] = pid, conn
                else:
                    pid, conn = children.pop(fd)
                    os.close(fd)
                    _, status = os.waitpid(pid, 0)
                    try:
                        conn.sendall(b"%d\\n" % status)
                    except OSError:  # the suite is gone
                        pass
                    conn.close()

    def file_size_limited(limit):  # a write past `limit` bytes fails with EFBIG (no SIGXFSZ)
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    def launch(body, fds):
        import json, time
        request = json.loads(body)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        if request["new_session"]:
            os.setsid()
        elif request["process_group"] is not None and request["process_group"] >= 0:
            os.setpgid(0, request["process_group"])  # (0: a group of its own, as Popen's process_group=0)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # TMPDIR is read again
        if request["umask"] >= 0:
            os.umask(request["umask"])
        if request["file_size_limit"] is not None:
            file_size_limited(request["file_size_limit"])
        cli.PROCESS_START = time.time()
        kind, argv = request["kind"], request["argv"]
        if kind == "script":  # as the console script's wrapper: sys.exit(entry())
            sys.argv, sys.path[0] = argv, os.path.dirname(argv[0])
            module, name = request["entry"]
            sys.exit(getattr(importlib.import_module(module), name)())
        if kind == "module":  # as `python -m`: argv[0] becomes the module's file
            sys.argv, sys.path[0] = argv[2:], os.getcwd()
            runpy._run_module_as_main(argv[2])
        elif kind == "path":  # as `python script.py`
            sys.argv, sys.path[0] = argv[1:], os.path.dirname(os.path.abspath(argv[1]))
            runpy.run_path(argv[1], run_name="__main__")
        else:
            sys.argv = ["-c", *argv[3:]]
            main = types.ModuleType("__main__")
            main.__builtins__ = __builtins__
            sys.modules["__main__"] = main
            exec(compile(argv[2], "<string>", "exec"), main.__dict__)

    _launch = serve(sys.argv[1])
    launch(*_launch)
""")


class _Server:
    def __init__(self, folder: Path, env: dict):
        self.path, self.env = str(folder / "fork_server.sock"), env
        self.log = open(folder / "fork_server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, self.path],
            env=env,
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        ready, _, _ = select.select([self.process.stdout], [], [], 300)
        line = self.process.stdout.readline() if ready else b""
        assert line == b"ready\n", f"the fork server did not start: {Path(self.log.name).read_text()[-3000:]}"

    def start(self, request: dict, fds: list[int]) -> tuple[socket.socket, int]:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        body = json.dumps(request).encode()
        socket.send_fds(conn, [b"%16d" % len(body)], fds)
        conn.sendall(body)
        return conn, int(_line(conn, timeout=60) or b"-1")

    def close(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self.log.close()


def _line(conn: socket.socket, timeout=None, pending: bytearray | None = None) -> bytes | None:
    """One reply line, or None if none came within `timeout` (what came of it stays in `pending`);
    b"" if the server hung up."""
    data = bytearray() if pending is None else pending
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([conn], [], [], timeout)
        if not ready:
            return None
        chunk = conn.recv(1)  # a byte at a time: the exit status may follow the PID's line at once
        if not chunk:
            return b""
        data += chunk
    line = bytes(data)
    data.clear()
    return line


class Forked(subprocess.Popen):
    """subprocess.Popen whose process the fork server starts and reaps: its exit status arrives on
    the connection the launch was asked on."""

    def __init__(self, args, *, kind, entry=None, file_size_limit=None, **kwargs):
        self._kind, self._entry, self._mark = kind, entry, os.environ.get(leaks.TEST_MARK)
        self._file_size_limit = file_size_limit
        self._pending = bytearray()
        super().__init__(args, **kwargs)

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                       restore_signals, gid, gids, uid, umask, start_new_session, process_group):  # fmt: skip
        fds = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1, errwrite if errwrite != -1 else 2]
        request = {
            "kind": self._kind,
            "entry": self._entry,
            "argv": [os.fsdecode(a) for a in args],
            "env": dict(os.environ if env is None else env),
            "cwd": os.fsdecode(cwd) if cwd is not None else os.getcwd(),
            "new_session": bool(start_new_session),
            "process_group": process_group,
            "umask": umask,
            "file_size_limit": self._file_size_limit,
        }
        try:
            self._conn, self.pid = _server().start(request, fds)
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)
        assert self.pid > 0, "the fork server did not start the launch"
        self._child_created = True
        _launched.append(self)

    def _try_wait(self, wait_flags):
        reply = _line(self._conn, 0 if wait_flags & os.WNOHANG else None, self._pending)
        if reply is None:
            return 0, 0
        assert reply, f"the fork server ended before launch {self.pid}"
        self._conn.close()
        return self.pid, int(reply)

    def _internal_poll(self, _deadstate=None, **_):
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(status)
            except (OSError, AssertionError):
                if _deadstate is not None:
                    self.returncode = _deadstate
            finally:
                self._waitpid_lock.release()
        return self.returncode


_state: dict = {}  # "folder", "env": set by configure(); "server" once started
_launched: list[Forked] = []
_scripts = {
    e.name: (e.module, e.attr) for e in entry_points(group="console_scripts") if e.value.startswith("resnet_train")
}


def configure(folder: Path, env: dict) -> None:
    """Where the server's socket and log go, and the environment it imports with (the suite's, as
    every test starts from it)."""
    _state.update(folder=folder, env={k: v for k, v in env.items() if k not in PER_LAUNCH})


def _server() -> _Server:
    if "server" not in _state:
        _state["server"] = _Server(_state["folder"], _state["env"])
    return _state["server"]


def close() -> None:
    server = _state.pop("server", None)
    if server is not None:
        server.close()


def _kind(args, kwargs) -> tuple[str, tuple | None] | None:
    """("script", entry) / ("code" | "module" | "path", None) where a fork runs `args` as a new process
    would; None where it must be a new process."""
    if "folder" not in _state or not isinstance(args, (list, tuple)) or any(kwargs.get(k) for k in UNFORKABLE):
        return None
    env = kwargs.get("env")
    env = os.environ if env is None else env
    if _imported_with_another(env):
        return None
    program = Path(os.fsdecode(args[0]))
    if program == Path(sys.executable) and len(args) > 2 and args[1] in ("-c", "-m"):
        return ("code" if args[1] == "-c" else "module"), None
    if program == Path(sys.executable) and len(args) > 1 and os.fsdecode(args[1]).endswith(".py"):
        return "path", None
    if program.parent == BIN and program.name in _scripts:
        return "script", _scripts[program.name]
    return None


def _imported_with_another(env) -> list[str]:
    """The variables `env` sets differently from the server's, among those read at imports."""
    differ = {k for k in set(env) | set(_state["env"]) if env.get(k) != _state["env"].get(k)}
    if "HOME" in differ and not _home_settings(env.get("HOME")):
        differ.remove("HOME")
    return sorted(k for k in differ if k not in PER_LAUNCH and not k.startswith(PER_LAUNCH_PREFIXES))


def _home_settings(home) -> list[Path]:
    """What a HOME holds that Keras or matplotlib read at import (the server imported them with the
    session's HOME, which holds their defaults): none, and another HOME is the same to a launch."""
    if not home:
        return []
    return [p for p in (Path(home) / ".keras" / "keras.json", Path(home) / ".config" / "matplotlib") if p.exists()]


def popen(args, *, fresh=False, file_size_limit=None, **kwargs) -> subprocess.Popen:
    """subprocess.Popen(args, **kwargs), forked from the server where that is the same.
    `file_size_limit`: bytes; a write beyond them fails with EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored)."""
    how = None if fresh else _kind(args, kwargs)
    _record(args, how, kwargs)
    if how is None:
        if file_size_limit is not None:
            kwargs["preexec_fn"] = lambda: _file_size_limited(file_size_limit)
        return subprocess.Popen(args, **kwargs)
    return Forked(args, kind=how[0], entry=how[1], file_size_limit=file_size_limit, **kwargs)


def _record(args, how, kwargs) -> None:
    """One line per launch in the session's launches.jsonl (summary() counts them)."""
    line = {"forked": how is not None, "args": [os.fsdecode(a)[:80] for a in list(args)[:3]]}
    line["test"] = os.environ.get(leaks.TEST_MARK)
    if how is None and "env" in _state:  # why not (for a look at launches.jsonl)
        line["env"] = _imported_with_another(os.environ if kwargs.get("env") is None else kwargs["env"])
    with open(Path(os.environ[leaks.SESSION_MARK]) / "launches.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def summary() -> str | None:
    """'N launches: F forked, the rest new processes' for this test session, or None if it made none."""
    path = Path(os.environ[leaks.SESSION_MARK]) / "launches.jsonl"
    if not path.exists():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    forked = sum(line["forked"] for line in lines)
    return f"launches.popen: {forked} launches forked from the suite's server, {len(lines) - forked} new processes"


def _file_size_limited(limit: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run(args, *, input=None, capture_output=False, timeout=None, check=False, **kwargs):
    """subprocess.run(args, ...), forked from the server where that is the same."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with popen(args, **kwargs) as process:
        try:
            out, err = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            process.kill()
            expired.output, expired.stderr = process.communicate()
            raise
        except BaseException:
            process.kill()
            raise
    done = subprocess.CompletedProcess(process.args, process.poll(), out, err)
    if check:
        done.check_returncode()
    return done


def outliving(mark: str, grace_s: float) -> list[str]:
    """The forked launches of the test `mark` still running `grace_s` after the call (each killed
    then; waited for, not slept); one line describing each."""
    mine = [p for p in _launched if p._mark == mark]
    _launched[:] = [p for p in _launched if p._mark != mark]
    deadline, described = time.monotonic() + grace_s, []
    for process in mine:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            described.append(f"pid {process.pid} (forked): {' '.join(map(str, process.args))[:300]}")
            process.kill()
            process.wait(timeout=10)
    return described
