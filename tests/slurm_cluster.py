"""A real one-node SLURM cluster on 127.0.0.1 for the cluster tier (`make test-cluster`).

start() installs slurm-wlm and munge where missing (scripts/install_slurm.sh), writes a MUNGE key
and a slurm.conf for this machine as one node into a temporary folder, starts munged, slurmctld
and slurmd in the foreground (children of this process, which stops them) and waits for the node
to be idle. stop() cancels every job, stops the three daemons, kills whatever of theirs is left
(slurmstepd outlives a stopped slurmd) and removes the folder; it runs once, from the fixture's
finalizer or at exit, whichever comes first. Every wait has a deadline and its failure says what
the daemons and the jobs wrote."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import leaks
import psutil

ROOT = Path(__file__).resolve().parents[1]
DAEMON_MARK = "RESNET_TRAIN_SLURM_CLUSTER"  # in the daemons' environment: what stop() kills
TOOLS = ("sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel", "slurmctld", "slurmd", "munged")

CONF = """\
ClusterName=resnettest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/socket,cred_expire=10
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
KillWait=10
InactiveLimit=0
Waittime=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL")


class SlurmError(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in TOOLS):
        return
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install_slurm.sh")], capture_output=True, text=True, timeout=900
    )
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if done.returncode or missing:
        raise SlurmError(f"installing SLURM failed (missing: {missing}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


class Cluster:
    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="resnet_train_slurm_", dir="/tmp"))
        self.folder.chmod(0o755)  # munged wants every directory above its socket executable by all
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.daemons: dict[str, subprocess.Popen] = {}
        self.stopped = False

    def env(self, **extra) -> dict:
        """The environment of the SLURM commands (and, through sbatch, of the jobs): this process's,
        with this interpreter's folder first on PATH (python, resnet-train: this project's)."""
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "SLURM_CONF": str(self.conf), **extra}

    def start(self) -> Cluster:
        munge = self.folder / "munge"
        munge.mkdir(mode=0o755)
        (key := self.folder / "munge.key").write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for name in ("state", "spool"):
            (self.folder / name).mkdir()
        self.conf.write_text(
            CONF.format(
                node=self.node,
                folder=self.folder,
                ctld_port=free_port(),
                slurmd_port=free_port(),
                cpus=os.cpu_count(),
                memory_mb=int(psutil.virtual_memory().total / 2**20 * 0.9),
            )
        )
        self._daemon(
            "munged",
            "munged",
            "--foreground",
            f"--key-file={key}",
            f"--socket={munge}/socket",
            f"--pid-file={munge}/pid",
            f"--seed-file={munge}/seed",
            "--force",
        )
        self._wait(lambda: (munge / "socket").exists(), 30, "munged's socket")
        self._daemon("slurmctld", "slurmctld", "-D", "-i", "-f", str(self.conf))
        self._wait(lambda: self.command("scontrol", "ping", check=False).returncode == 0, 60, "slurmctld answering")
        self._daemon("slurmd", "slurmd", "-D", "-N", self.node, "-f", str(self.conf))
        self._wait(self._node_idle, 60, "the node idle in sinfo")
        return self

    def _daemon(self, name, *args) -> None:
        env = {k: v for k, v in self.env().items() if k != leaks.TEST_MARK}  # they outlive every test
        env[DAEMON_MARK] = str(self.folder)
        log = open(self.folder / f"{name}.out", "w")
        self.daemons[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()

    def _node_idle(self) -> bool:
        done = self.command("sinfo", "-h", "-N", "-o", "%t", check=False)
        return done.returncode == 0 and done.stdout.strip() == "idle"

    def _wait(self, condition, timeout, what) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            ended = [f"{n} (exit {p.returncode})" for n, p in self.daemons.items() if p.poll() is not None]
            if ended or time.monotonic() > deadline:
                gone = f"; ended: {', '.join(ended)}" if ended else ""
                raise SlurmError(f"no {what} after {timeout} s{gone}\n{self.logs()}")
            time.sleep(0.3)

    def command(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        done = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise SlurmError(f"{' '.join(args)}: exit {done.returncode}\n{done.stderr}{done.stdout}\n{self.logs()}")
        return done

    def sbatch(self, *args, env=None) -> str:
        """sbatch args... in `env` (default: this process's): the job's id."""
        done = subprocess.run(
            ["sbatch", "--parsable", *args], env=env or self.env(), capture_output=True, text=True, timeout=60
        )
        if done.returncode:
            raise SlurmError(f"sbatch {' '.join(args)}: exit {done.returncode}\n{done.stderr}\n{self.logs()}")
        return done.stdout.strip().split(";")[0]

    def job(self, job_id) -> dict:
        """scontrol's fields of a job (of an array's first task listed)."""
        out = self.command("scontrol", "show", "job", "-o", str(job_id)).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id, condition, timeout, what) -> dict:
        """Polls the job until condition(its fields); at the deadline, a failure with the job's output."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job(job_id)
            if condition(fields):
                return fields
            if time.monotonic() > deadline:
                raise SlurmError(f"job {job_id}: no {what} after {timeout} s: {fields}\n{self.logs(job_id)}")
            time.sleep(0.5)

    def wait_file(self, job_id, path, text, timeout) -> None:
        """Until `path` holds `text`, while the job lasts (a job that ended fails at once)."""
        found = lambda f: path.is_file() and text in path.read_text(errors="replace")  # noqa: E731
        fields = self.wait_job(job_id, lambda f: found(f) or f["JobState"] in ENDED, timeout, f"{text!r} in {path}")
        if not found(fields):
            raise SlurmError(f"job {job_id} ended before {path} held {text!r}: {fields}\n{self.logs(job_id)}")

    def logs(self, *job_ids, tail=4000) -> str:
        """The daemons' logs and the jobs' output files, each's end."""
        parts = []
        files = sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.out"))
        for job_id in job_ids:
            try:
                fields = self.job(job_id)
            except (SlurmError, subprocess.SubprocessError, IndexError):
                continue
            files += [Path(fields[k]) for k in ("StdOut", "StdErr") if fields.get(k)]
        for path in dict.fromkeys(files):
            text = path.read_text(errors="replace") if path.is_file() else "(no such file)"
            parts.append(f"---- {path} ----\n{text[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
                self.command("scancel", "--full", "--user=root", check=False, timeout=30)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self.command("squeue", "-h", check=False, timeout=30).stdout:
                    time.sleep(0.5)
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                process = self.daemons.get(name)
                if process is not None and process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=10)
            leaks.outliving(DAEMON_MARK, str(self.folder), grace_s=5)  # slurmstepd and the like
            shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Cluster:
    """A started cluster; stopped at exit unless stopped before (the fixture's finalizer)."""
    ensure_installed()
    cluster = Cluster()
    atexit.register(cluster.stop)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
