"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd.

Debian's packages (``slurmctld``, ``slurmd``, ``slurm-client``, ``munge``) install in
seconds; ``install`` does that once on a machine where they are missing and we are root.
``SingleNodeSlurm`` then runs the three daemons in the foreground as children of this
process, with every file (configuration, munge key and socket, state, spool, logs) in
one temporary directory and on free ports, so that nothing of the machine's own set-up
is used or changed; ``stop`` ends them by pid. Clients find the cluster through
``SLURM_CONF`` (``env``).

The node has two fake GPUs (GRES backed by /dev/null and /dev/zero): SLURM hands a job
that asks for one a ``CUDA_VISIBLE_DEVICES`` of its own, as on a real GPU node, and
``config_overrides`` lets it offer more CPUs than the machine has, so that a handful of
one-CPU worker jobs run side by side on two cores.

Run as a script it installs and checks the cluster once (``.ci/run`` shows that step in
its log); the tests start their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlipx_serve.processes import end_processes

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo",
           "srun")
START_TIMEOUT = 30.0  # seconds the daemons may take until the node is idle
INSTALL_TIMEOUT = 600.0
ACTIVE_STATES = "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED,RESIZING"
POLICY_RC = Path("/usr/sbin/policy-rc.d")  # Debian: exit 101 keeps apt from starting services


def missing_commands() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


def why_not_available() -> str | None:
    """None when a cluster can run here (installing it if need be), else why not."""
    if not missing_commands():
        return None if os.geteuid() == 0 else \
            "the SLURM tests run slurmd, which starts jobs as their user: they need root"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"the SLURM tests need {', '.join(missing_commands())}: as root on Debian "
                f"they install themselves (apt-get install {' '.join(PACKAGES)})")
    return None


def install() -> None:
    """apt-get install the packages, without letting apt start the system's daemons."""
    if not missing_commands():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    placed_policy = not POLICY_RC.exists()
    if placed_policy:
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        for command in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}"
                                   f"{done.stderr[-2000:]}")
    finally:
        if placed_policy:
            POLICY_RC.unlink()
    if missing_commands():
        raise RuntimeError(f"installed {PACKAGES}, yet {missing_commands()} are missing")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SingleNodeSlurm:
    """munged, slurmctld and slurmd in ``directory``; ``start``, then ``stop``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.conf = directory / "slurm.conf"
        self.logs = directory / "log"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """What a client of this cluster (sbatch, squeue, ...) needs in its environment."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        for name in ("state", "spool", "log", "munge-key", "munge"):
            (self.directory / name).mkdir(mode=0o700 if name == "munge-key" else 0o755)
        key = self.directory / "munge-key" / "munge.key"
        self._run(["mungekey", "--create", "--keyfile", str(key)])
        self._write_config()
        socket_path = self.directory / "munge" / "munge.socket"
        try:
            self._daemon("munged", ["munged", "--foreground", "--force",
                                    f"--socket={socket_path}", f"--key-file={key}",
                                    f"--pid-file={self.directory / 'munge' / 'munged.pid'}",
                                    f"--seed-file={self.directory / 'munge' / 'seed'}",
                                    f"--log-file={self.logs / 'munged.log'}"])
            self._wait(socket_path.exists, "munged to create its socket")
            self._daemon("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
            self._daemon("slurmd", ["slurmd", "-D", "-c", "-f", str(self.conf), "-N", "localhost"])
            self._wait(self._node_idle, "the node to be idle (sinfo)")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM each daemon by its pid, the last started first; SIGKILL what lingers."""
        for proc in reversed(self.procs):
            end_processes([proc], 10)
        self.procs = []

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def active_jobs(self) -> list[str]:
        """The jobs that have not ended, as 'id|name|state|reason' lines."""
        done = self.run("squeue", "--noheader", f"--states={ACTIVE_STATES}",
                        "--format=%i|%j|%T|%r")
        if done.returncode != 0:
            raise RuntimeError(f"squeue failed: {done.stderr}")
        return done.stdout.split()

    def log(self) -> str:
        parts = []
        for path in sorted(self.logs.glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # ------------------------------------------------------------ inside

    def _write_config(self) -> None:
        controller, node = free_ports(2)
        d = self.directory
        (d / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n"
                                     "NodeName=localhost Name=gpu File=/dev/zero\n")
        self.conf.write_text(f"""\
ClusterName=mlipxtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={controller}
SlurmdPort={node}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d / 'munge' / 'munge.socket'}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={self.logs / 'slurmctld.log'}
SlurmdLogFile={self.logs / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=localhost NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs=16 \
RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")

    def _daemon(self, name: str, args: list[str]) -> None:
        output = open(self.logs / f"{name}.out", "wb")  # noqa: SIM115 - the child holds it
        try:
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output,
                                               stderr=subprocess.STDOUT, env=os.environ))
        finally:
            output.close()

    def _node_idle(self) -> bool:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode}:\n"
                                   f"{self.log()}")
        done = self.run("sinfo", "--noheader", "--format=%T", timeout=10)
        return done.returncode == 0 and done.stdout.strip() == "idle"

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up after {START_TIMEOUT:g} s waiting for {what}:\n"
                                   f"{self.log()}")
            time.sleep(0.1)

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr}")


def main() -> int:
    """Install if need be, start, run one job, stop: the check .ci/run shows."""
    why = why_not_available()
    if why is not None:
        print(f"no SLURM here: {why}")
        return 0
    started = time.monotonic()
    try:
        install()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        print(f"no SLURM here, the SLURM tests will skip: {error}")
        return 0
    installed = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slurm-") as directory:
        cluster = SingleNodeSlurm(Path(directory))
        cluster.start()
        try:
            up = time.monotonic()
            job = cluster.run("srun", "--gres=gpu:1", "printenv", "CUDA_VISIBLE_DEVICES")
            print(f"SLURM: installed in {installed - started:.1f} s, daemons up in "
                  f"{up - installed:.1f} s, a job with a GPU saw CUDA_VISIBLE_DEVICES="
                  f"{job.stdout.strip()!r} ({time.monotonic() - up:.1f} s)")
            return job.returncode
        finally:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
