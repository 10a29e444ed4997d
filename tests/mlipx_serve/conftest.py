"""Fixtures for system tests that run the model broker, workers and clients as processes.

A ``ServeSystem`` starts ``mlipx serve-broker`` and ``mlipx serve`` on IPC paths inside a
short temporary directory, with ``XDG_RUNTIME_DIR`` pointing there too (so worker logs and
the private default directory stay inside it). It waits on the broker's own status rather
than on sleeps, and when the test is over it ends every process it started by pid, and
every worker a broker autostarted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import support
from support import Proc

from mlipx_serve import environment  # imports only os: numpy is not loaded yet

# BLAS threads fighting over a small shared machine made scipy's tiny 3x3 matrix functions
# (used by ase.filters) ten times slower. Set before numpy loads: mlipx_serve is imported
# lazily below for that reason, and children inherit the setting.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

MLIPX = [sys.executable, "-m", "mlipx_serve.cli"]
HEARTBEAT = "0.3"
WAIT = 30.0  # seconds any condition may take on a busy machine before a test fails
OUR_ENV = environment.ALL  # the tests' own settings must not leak into their children

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    return support.wait_until(condition, what, timeout)


def status(endpoint: str) -> dict:
    """``get_broker_status`` with a short probe, so a wait loop polls often."""
    from mlipx_serve import get_broker_status

    return get_broker_status(endpoint, timeout=1.0)


def service(endpoint: str, name: str) -> dict:
    """One service's counters; all zero when the broker has not heard of it (or is down)."""
    state = status(endpoint)
    services = state["status"]["services"] if state["running"] else {}
    return services.get(name, {"workers": 0, "idle": 0, "busy": 0, "queued": 0,
                               "served": 0, "failed": 0})


def workers_of(endpoint: str, name: str) -> list[dict]:
    """The broker's entries for the workers of ``name`` (id, state, served, ...)."""
    state = status(endpoint)
    workers = state["status"]["workers"] if state["running"] else []
    return [worker for worker in workers if worker["service"] == name]


def started_pids(endpoint: str) -> list[int]:
    """Pids of the live workers the broker autostarted."""
    state = status(endpoint)
    return list(state["autostart"].get("started_pids", [])) if state["running"] else []


def worker_alive(pid: int) -> bool:
    """Is ``pid`` a live (not zombie) ``mlipx serve`` process? Guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X") and b"mlipx_serve.cli" in cmdline


def wait_gone(pids: Sequence[int], timeout: float = WAIT) -> list[int]:
    """Wait for the workers to exit; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if worker_alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if worker_alive(pid)]


def child_env(run_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of every child: hermetic MLIPX_* settings, private dir inside ours."""
    env = {key: value for key, value in os.environ.items() if key not in OUR_ENV}
    env.update(XDG_RUNTIME_DIR=str(run_dir), PYTHONUNBUFFERED="1", COLUMNS="240")
    env.update(extra)
    return env


class ServeSystem:
    """The brokers, workers and client processes of one test, inside ``directory``."""

    # Helpers for tests, here so that test modules need not import this conftest.
    wait_until = staticmethod(wait_until)
    status = staticmethod(status)
    service = staticmethod(service)
    workers_of = staticmethod(workers_of)
    started_pids = staticmethod(started_pids)
    worker_alive = staticmethod(worker_alive)
    wait_gone = staticmethod(wait_gone)

    def __init__(self, directory: Path):
        self.directory = directory
        self.run_dir = directory / "run"
        self.run_dir.mkdir(mode=0o700)
        self.procs: list[Proc] = []
        self.brokers: dict[str, Proc] = {}

    def ipc(self, name: str) -> str:
        return f"ipc://{self.directory}/{name}"

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(self.run_dir, **extra)

    def spawn(self, name: str, args: Sequence[str], cwd: Path | None = None, **env: str) -> Proc:
        log_path = self.directory / f"{name}-{len(self.procs)}.log"
        proc = Proc(name, args, log_path, self.env(**env), cwd=cwd)
        self.procs.append(proc)
        return proc

    def broker(self, *options: str, path: str = "broker.ipc", heartbeat: bool = True) -> str:
        """Start ``serve-broker`` at ``path`` and return its client endpoint once it answers."""
        endpoint = self.ipc(path)
        args = [*MLIPX, "serve-broker", "--path", endpoint, *options]
        args += ["--heartbeat", HEARTBEAT] if heartbeat else []
        proc = self.spawn("broker", args)
        self.brokers[endpoint] = proc
        wait_until(lambda: self._answers(endpoint, proc), f"a broker at {endpoint}")
        return endpoint

    def _answers(self, endpoint: str, proc: Proc) -> bool:
        if not proc.alive():
            raise AssertionError(f"the broker exited early:\n{proc.log()}")
        return status(endpoint)["running"]

    def worker(self, name: str, broker: str, *options: str, heartbeat: bool = True) -> Proc:
        args = [*MLIPX, "serve", name, "--broker", broker, *options]
        args += ["--heartbeat", HEARTBEAT] if heartbeat else []
        return self.spawn(f"worker-{name}", args)

    def wait_workers(self, endpoint: str, name: str, count: int) -> dict:
        return wait_until(lambda: _with_workers(endpoint, name, count),
                          f"{count} worker(s) for '{name}' at {endpoint}")

    def run(self, *args: str, timeout: float = 60.0, cwd: Path | None = None,
            **env: str) -> subprocess.CompletedProcess:
        """Run a command to its end and capture its output."""
        return subprocess.run(list(args), env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)

    def stop_broker(self, endpoint: str) -> tuple[int, list[int]]:
        """SIGTERM the broker; return its exit status and the pids it had autostarted."""
        pids = started_pids(endpoint)
        return self.brokers.pop(endpoint).end(), pids

    def close(self) -> None:
        """End everything; a worker that outlived its broker is killed and reported."""
        autostarted = [pid for endpoint in self.brokers for pid in started_pids(endpoint)]
        for proc in reversed(self.procs):  # clients and workers before their brokers
            proc.end()
        leftover = wait_gone(autostarted, timeout=15.0)
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert not leftover, f"autostarted workers outlived their broker: {leftover}"


def _with_workers(endpoint: str, name: str, count: int) -> dict | None:
    state = service(endpoint, name)
    return state if state["workers"] == count else None


@contextmanager
def serve_system_in_tmp() -> Iterator[ServeSystem]:
    directory = Path(tempfile.mkdtemp(prefix="mlx-", dir="/tmp"))
    system = ServeSystem(directory)
    try:
        yield system
    finally:
        try:
            system.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def serve_system() -> Iterator[ServeSystem]:
    with serve_system_in_tmp() as system:
        yield system


@pytest.fixture(scope="module")
def shared_system() -> Iterator[ServeSystem]:
    """One system for the tests that only need some broker with ``emt`` on it."""
    with serve_system_in_tmp() as system:
        yield system


@pytest.fixture(scope="module")
def bus(shared_system: ServeSystem) -> str:
    """An autostart broker shared by a module's tests; ``emt`` starts on first use."""
    return shared_system.broker("--autostart")


# ------------------------------------------------------------ a real SLURM cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[object]:
    """A single-node SLURM cluster for the session (``tests/slurm_cluster.py``), installed
    with apt on first use where we are root; the tests skip, saying why, elsewhere."""
    import slurm_cluster as cluster_module

    why = cluster_module.why_not_available()
    if why is not None:
        pytest.skip(why)
    try:
        cluster_module.install()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"the SLURM tests need SLURM, which could not be installed: {error}")
    directory = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    cluster = cluster_module.SingleNodeSlurm(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster) -> Iterator[object]:
    """The cluster, with no job of a test left behind: what is still there at the end
    is cancelled, and the test fails if its brokers should have done that."""
    assert slurm_cluster.active_jobs() == [], "a job of an earlier test is still there"
    yield slurm_cluster
    left = slurm_cluster.active_jobs()
    if left:
        slurm_cluster.run("scancel", *[line.split("|")[0] for line in left])
    support.wait_until(lambda: not slurm_cluster.active_jobs(), "the jobs to end", WAIT)
