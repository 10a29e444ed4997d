"""Fixtures for tests that run brokers and workers as real processes.

``mdp_system`` hands a test a ``System``: it starts brokers (``python -m mdp.cli broker``)
and workers (``helpers/worker.py`` or ``mdp echo``) on endpoints in a short temporary
directory, waits on the broker's own status rather than on sleeps, and ends every process
it started, by pid, when the test is over.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import support

from mdp.client import ask
from mdp.errors import MDPError

HELPERS = Path(__file__).parent / "helpers"
WORKER_SCRIPT = HELPERS / "worker.py"
RFC7_WORKER = HELPERS / "rfc7_worker.py"
RFC7_CLIENT = HELPERS / "rfc7_client.py"
MDP = [sys.executable, "-m", "mdp.cli"]
WAIT = 20.0  # seconds any condition may take on a busy machine before a test fails
HEARTBEAT = 0.2
LIVENESS = 5  # a little slack for a loaded machine; tests that care pass their own
# A broker and workers in the test's own process share its interpreter: on a loaded
# machine they stall together for longer than a few heartbeats, and a peer declared dead
# then is a failure of the test, not of the code. (A bare socket that plays a worker sends
# no heartbeats at all.) 10 s at HEARTBEAT.
IN_PROCESS_LIVENESS = 50

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    return support.wait_until(condition, what, timeout)


def free_tcp_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def broker_status(endpoint: str, timeout: float = 0.5) -> dict | None:
    """The broker's ``mmi.status``, or None if it does not answer in time."""
    try:
        return json.loads(ask(endpoint, "mmi.status", timeout=timeout)[0])
    except MDPError:
        return None


def service_status(endpoint: str, service: str) -> dict:
    """One service's counters (all zero if the broker has not heard of it yet)."""
    status = broker_status(endpoint) or {"services": {}}
    return status["services"].get(service, {"workers": 0, "idle": 0, "busy": 0,
                                             "queued": 0, "served": 0, "failed": 0,
                                             "expired": 0, "rejected": 0})


def service_workers(endpoint: str, service: str) -> list[dict]:
    status = broker_status(endpoint) or {"workers": []}
    return [w for w in status["workers"] if w["service"] == service]


class Proc(support.Proc):
    @property
    def pid_bytes(self) -> bytes:
        """How the helper worker names itself in every reply."""
        return str(self.pid).encode()

    def wait(self, timeout: float = WAIT) -> int:
        return super().wait(timeout)


class System:
    """Brokers and workers of one test, on endpoints inside ``directory``."""

    # Helpers for tests, here so that test modules need not import this conftest.
    status = staticmethod(broker_status)
    service = staticmethod(service_status)
    service_workers = staticmethod(service_workers)

    def __init__(self, directory: Path):
        self.directory = directory
        self.procs: list[Proc] = []

    def wait_until(self, condition: Callable[[], T], what: str, timeout: float = WAIT) -> T:
        """``wait_until``, with the tail of every process's log when it gives up."""
        try:
            return wait_until(condition, what, timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None

    def logs(self, lines: int = 15) -> str:
        return "\n".join(f"--- {proc} exit={proc.popen.poll()}\n"
                         + "\n".join(proc.log().splitlines()[-lines:]) for proc in self.procs)

    def ipc(self, name: str) -> str:
        return f"ipc://{self.directory}/{name}"

    def tcp(self) -> str:
        return free_tcp_endpoint()

    def spawn(self, name: str, args: Sequence[str]) -> Proc:
        proc = Proc(name, args, self.directory / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def serve(self, endpoint: str, service: str, count: int, worker_options: dict | None = None,
              **broker_options: object) -> tuple[Proc, list[Proc]]:
        """A broker, then ``count`` workers; returns once all have registered.

        The workers start only once the broker answers: a worker that gives up on a broker
        that is not there yet may leave its READY behind, a ghost registration that takes
        requests until it expires, and the tests that count workers would count it.
        """
        broker = self.broker(endpoint, **broker_options)
        workers = [self.worker(endpoint, service, **(worker_options or {}))
                   for _ in range(count)]
        self.wait_workers(endpoint, service, count)
        return broker, workers

    def broker(self, *binds: str, worker_bind: Sequence[str] = (),
               heartbeat: float = HEARTBEAT, liveness: int = LIVENESS,
               expiry: float | None = None, queue_limit: int | None = None,
               max_attempts: int | None = None, wait: bool = True) -> Proc:
        args = [*MDP, "broker", "--heartbeat", str(heartbeat), "--liveness", str(liveness)]
        args += [a for bind in binds for a in ("--bind", bind)]
        args += [a for bind in worker_bind for a in ("--worker-bind", bind)]
        for option, value in (("--expiry", expiry), ("--queue-limit", queue_limit),
                              ("--max-attempts", max_attempts)):
            if value is not None:
                args += [option, str(value)]
        return self._start_broker(args, binds[0], wait)

    def default_broker(self, endpoint: str, *options: str) -> Proc:
        """A broker with the command line's defaults (heartbeats every 2.5 s and all),
        but for ``options``."""
        return self._start_broker([*MDP, "broker", "--bind", endpoint, *options], endpoint)

    def _start_broker(self, args: list[str], endpoint: str, wait: bool = True) -> Proc:
        proc = self.spawn("broker", args)
        if wait:
            self.wait_until(lambda: broker_status(endpoint), f"a broker at {endpoint}")
        return proc

    def worker(self, endpoint: str, service: str, *, heartbeat: float = HEARTBEAT,
               liveness: int = LIVENESS, idle_timeout: float | None = None,
               dialect: str = "0.2") -> Proc:
        args = [sys.executable, str(WORKER_SCRIPT), endpoint, service,
                "--heartbeat", str(heartbeat), "--liveness", str(liveness),
                "--dialect", dialect]
        if idle_timeout is not None:
            args += ["--idle-timeout", str(idle_timeout)]
        return self.spawn(f"worker-{service}", args)

    def rfc7_worker(self, endpoint: str, service: str, log: Path) -> Proc:
        """helpers/rfc7_worker.py: silent while its handler runs, like the zguide's."""
        return self.spawn(f"rfc7-worker-{service}",
                          [sys.executable, str(RFC7_WORKER), endpoint, service, str(log)])

    def rfc7_client(self, endpoint: str, timeout: float, *requests: Sequence[str]) -> Proc:
        """helpers/rfc7_client.py sending ``requests`` (each [service, *body]) in turn."""
        words = [word for request in requests for word in ("--", *request)][1:]
        return self.spawn("rfc7-client", [sys.executable, str(RFC7_CLIENT), endpoint,
                                          str(timeout), *words])

    def wait_workers(self, endpoint: str, service: str, count: int) -> dict:
        return self.wait_until(lambda: _with_workers(endpoint, service, count),
                               f"{count} worker(s) for '{service}' at {endpoint}")

    def close(self) -> None:
        for proc in reversed(self.procs):  # workers before the brokers they talk to
            proc.end()


def _with_workers(endpoint: str, service: str, count: int) -> dict | None:
    state = service_status(endpoint, service)
    return state if state["workers"] == count else None


@pytest.fixture
def mdp_system() -> Iterator[System]:
    directory = Path(tempfile.mkdtemp(prefix="mdp-", dir="/tmp"))
    system = System(directory)
    try:
        yield system
    finally:
        system.close()
        print(system.logs(lines=40))  # pytest shows it when the test failed
        shutil.rmtree(directory, ignore_errors=True)



@pytest.fixture
def broker():
    """A broker in this process, on an ipc path of its own, with a short heartbeat and a
    long liveness (``IN_PROCESS_LIVENESS``)."""
    from mdp.broker import Broker
    from mdp.core import BrokerConfig

    config = BrokerConfig(heartbeat_interval=HEARTBEAT, heartbeat_liveness=IN_PROCESS_LIVENESS)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="mdp-b-") as directory:
        broker = Broker(f"ipc://{directory}/b.ipc", config=config)
        broker.start()
        yield broker
        broker.stop()
        broker.join(10)


@pytest.fixture
def in_process_worker(broker):
    """Starts workers (``mdp.Worker`` threads) on ``broker``, with its heartbeat and
    liveness; stops them when the test is over."""
    from mdp.worker import Worker

    started = []

    def start(service: str, handler: Callable[[list], list]) -> Worker:
        worker = Worker(broker.endpoints[0], service, handler, heartbeat_interval=HEARTBEAT,
                        heartbeat_liveness=IN_PROCESS_LIVENESS)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        worker.join(10)

