"""Interoperability with majortomo 0.2.0, a Majordomo implementation nobody here wrote.

majortomo calls its protocol MDP/0.2 but differs from RFC 18 (see protocol/majortomo.md).
Every combination runs over real sockets: majortomo's broker and its worker run as
subprocesses, our broker and worker run in threads of the test process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import majortomo
import pytest
import zmq

from mdp.broker import Broker
from mdp.client import Client
from mdp.core import BrokerConfig
from mdp.errors import (
    BROKER_ERROR_MARKER,
    WORKER_ERROR_MARKER,
    RequestExpired,
    RequestTimeout,
    WorkerError,
)
from mdp.protocol import Dialect
from mdp.worker import Worker

pytestmark = pytest.mark.timeout(90)

HELPER = Path(__file__).parent / "helpers" / "majortomo_worker.py"
HB = 0.5  # heartbeat interval everywhere unless a test says otherwise
WAIT = 20.0  # generous deadline for anything to come up on a busy machine


# ---------------------------------------------------------------- waiting and ending


def wait_for(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---------------------------------------------------------------- handlers of our worker


def _parts(count: int, tail: list):
    for i in range(count):
        yield [b"part", str(i).encode()]
    yield tail


def our_handler(frames: list):
    """Mirrors the majortomo helper worker, tagging replies ``ours``."""
    head = bytes(frames[0]) if frames else b""
    if head == b"stream":
        return _parts(int(frames[1]), [b"done"])
    if head == b"sleep":
        time.sleep(float(frames[1]))
        return b"slept"
    if head == b"fail":
        raise RuntimeError("asked to fail")
    return [b"ours", *frames]


STREAMED = [[b"part", b"0"], [b"part", b"1"], [b"part", b"2"], [b"done"]]


# ---------------------------------------------------------------- the test environment


class Env:
    """Starts brokers, workers and clients, and ends them all, last started first."""

    def __init__(self, directory: str, stack: contextlib.ExitStack):
        self.dir = directory
        self.stack = stack
        self.broker: Broker | None = None
        self._stopped: list = []

    def stop(self, obj: Broker | Worker) -> None:
        """Stop a broker or worker thread once (a second stop() would write to a closed fd)."""
        if not any(obj is done for done in self._stopped):
            self._stopped.append(obj)
            obj.stop()
            obj.join(10)

    def our_broker(self, **config) -> str:
        config = {"heartbeat_interval": HB, "heartbeat_liveness": 6,
                  "request_expiry": 30.0, **config}
        endpoint = f"ipc://{self.dir}/ours"
        self.broker = Broker(endpoint, config=BrokerConfig(**config))
        self.broker.start()
        self.stack.callback(self.stop, self.broker)
        return endpoint

    def their_broker(self) -> str:
        path = f"{self.dir}/theirs"
        self._spawn("majortomo-broker", "-m", "majortomo.broker", "-b", f"ipc://{path}",
                    "-i", str(HB), "-t", str(HB * 4))
        wait_for(lambda: os.path.exists(path), "majortomo's broker to bind " + path)
        return f"ipc://{path}"

    def their_worker(self, endpoint: str, service: str, hb: float = HB) -> subprocess.Popen:
        return self._spawn(f"majortomo-worker-{service}", str(HELPER), endpoint, service,
                           str(hb))

    def our_worker(self, endpoint: str, service: str, **options) -> Worker:
        options = {"heartbeat_interval": HB, "heartbeat_liveness": 6, **options}
        worker = Worker(endpoint, service, our_handler, **options)
        worker.start()
        self.stack.callback(self.stop, worker)
        wait_for(worker.connected.is_set, f"our worker for '{service}' to connect")
        return worker

    def our_client(self, endpoint: str, dialect: Dialect = Dialect.V02, **options) -> Client:
        options = {"timeout": WAIT, "retries": 0, **options}
        client = Client(endpoint, dialect=dialect, **options)
        self.stack.callback(client.close)
        return client

    def their_client(self, endpoint: str) -> majortomo.Client:
        client = majortomo.Client(endpoint, zmq_linger=0)
        client.connect()
        self.stack.callback(client.close)
        return client

    def raw_dealer(self, endpoint: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        self.stack.callback(sock.close)
        return sock

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(f"{self.dir}/{name}.log", "wb")  # noqa: SIM115 - closed by the stack
        self.stack.callback(log.close)
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT)
        self.stack.callback(stop_process, proc)
        return proc


@pytest.fixture
def env():
    directory = tempfile.mkdtemp(dir="/tmp", prefix="mt")
    try:
        with contextlib.ExitStack() as stack:
            yield Env(directory, stack)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def wait_registered(endpoint: str, service: str) -> None:
    """Our broker answers MMI, so ask it rather than guess how long a worker takes."""
    with Client(endpoint, timeout=WAIT, retries=0) as client:
        wait_for(lambda: client.request("mmi.service", service) == [b"200"],
                 f"a worker for '{service}' to register with our broker")


def their_call(client: majortomo.Client, service: bytes, *frames: bytes) -> list:
    client.send(service, *frames)
    return list(client.recv_all(timeout=WAIT))


def recv_raw(sock: zmq.Socket) -> list:
    assert sock.poll(WAIT * 1000), "no message came to the raw socket"
    return sock.recv_multipart()


# ---------------------------------------------------------------- (a) their client, our broker


def test_their_client_sends_multiframe_request_to_our_worker(env):
    endpoint = env.our_broker()
    env.our_worker(endpoint, "echo")
    client = env.their_client(endpoint)
    body = (b"a", b"", b"\x00\xff" * 1000)
    assert their_call(client, b"echo", *body) == [[b"ours", *body]]
    assert client.recv_part(timeout=1) is None  # the reply was FINAL: nothing more due


def test_their_client_receives_generator_parts_as_partial_then_final(env):
    endpoint = env.our_broker()
    env.our_worker(endpoint, "echo")
    client = env.their_client(endpoint)
    # recv_all stops at the first FINAL: four parts prove three PARTIALs and one FINAL
    assert their_call(client, b"echo", b"stream", b"3") == STREAMED
    assert their_call(client, b"echo", b"again") == [[b"ours", b"again"]]


def test_our_broker_answers_their_client_in_its_own_form(env):
    endpoint = env.our_broker()
    env.our_worker(endpoint, "echo")
    sock = env.raw_dealer(endpoint)
    sock.send_multipart([b"", b"MDPC02", b"\x02", b"echo", b"stream", b"1"])
    assert recv_raw(sock) == [b"", b"MDPC02", b"\x03", b"part", b"0"]
    assert recv_raw(sock) == [b"", b"MDPC02", b"\x04", b"done"]


def test_their_client_can_use_our_mmi(env):
    endpoint = env.our_broker()
    env.our_worker(endpoint, "echo")
    client = env.their_client(endpoint)
    assert their_call(client, b"mmi.service", b"echo") == [[b"200"]]
    assert their_call(client, b"mmi.service", b"nobody") == [[b"404"]]


def test_their_client_receives_a_worker_error_as_a_normal_final(env):
    endpoint = env.our_broker()
    env.our_worker(endpoint, "echo")
    client = env.their_client(endpoint)
    (part,) = their_call(client, b"echo", b"fail")
    assert part[:3] == [WORKER_ERROR_MARKER, b"RuntimeError", b"asked to fail"]
    assert b"Traceback" in part[3] and part[4]  # the traceback, and which worker


# ---------------------------------------------------------------- (b) their worker, our broker


def test_their_worker_serves_our_v02_client(env):
    endpoint = env.our_broker()
    env.their_worker(endpoint, "mt")
    wait_registered(endpoint, "mt")
    client = env.our_client(endpoint)
    assert client.request("mt", "a", b"", "c") == [b"majortomo", b"a", b"", b"c"]
    assert list(client.stream("mt", "stream", "3")) == STREAMED


def test_their_worker_serves_our_v01_client_with_parts_joined(env):
    endpoint = env.our_broker()
    env.their_worker(endpoint, "mt")
    wait_registered(endpoint, "mt")
    client = env.our_client(endpoint, Dialect.V01)
    assert client.request("mt", "a", "b") == [b"majortomo", b"a", b"b"]
    assert list(client.stream("mt", "stream", "3")) == [sum(STREAMED, [])]


def test_their_worker_leaves_cleanly_and_our_broker_notices(env):
    endpoint = env.our_broker()
    worker = env.their_worker(endpoint, "mt")
    wait_registered(endpoint, "mt")
    stop_process(worker)
    assert worker.returncode == 0
    client = env.our_client(endpoint)
    wait_for(lambda: client.request("mmi.service", "mt") == [b"404"],
             "our broker to drop the majortomo worker after its DISCONNECT")


def test_their_worker_ends_when_our_broker_stops(env):
    """majortomo's worker does not reconnect after DISCONNECT, which our broker sends to
    every worker when it stops."""
    endpoint = env.our_broker()
    worker = env.their_worker(endpoint, "mt")
    wait_registered(endpoint, "mt")
    env.stop(env.broker)
    assert worker.wait(WAIT) == 0


def test_slow_handler_of_their_worker_keeps_its_request(env):
    """majortomo's worker sends no heartbeat while its handler runs; a busy worker is held
    to the busy timeout, not to heartbeat_interval * heartbeat_liveness (1.5 s here)."""
    endpoint = env.our_broker(heartbeat_interval=0.3, heartbeat_liveness=5,
                              request_expiry=1.0)
    worker = env.their_worker(endpoint, "mt", hb=0.3)
    wait_registered(endpoint, "mt")
    client = env.our_client(endpoint)
    assert client.request("mt", "sleep", "3") == [b"slept"]
    assert client.request("mt", "after") == [b"majortomo", b"after"]
    assert worker.poll() is None


# ---------------------------------------------------------------- (c) our peers, their broker


def test_our_client_and_worker_through_their_broker(env):
    endpoint = env.their_broker()
    env.our_worker(endpoint, "echo", dialect=Dialect.MAJORTOMO)
    client = env.our_client(endpoint, Dialect.MAJORTOMO)
    assert client.request("echo", "a", b"", "c") == [b"ours", b"a", b"", b"c"]
    assert list(client.stream("echo", "stream", "3")) == STREAMED
    with pytest.raises(WorkerError, match="asked to fail"):
        client.request("echo", "fail")


def test_their_broker_takes_our_workers_ready_with_metadata(env):
    endpoint = env.their_broker()
    env.our_worker(endpoint, "echo", dialect=Dialect.MAJORTOMO,
                   metadata={"host": "gpu-7", "device": "GPU 1"})
    assert env.our_client(endpoint, Dialect.MAJORTOMO).request("echo", "a") == [b"ours", b"a"]


def test_their_client_reaches_our_worker_through_their_broker(env):
    endpoint = env.their_broker()
    env.our_worker(endpoint, "echo", dialect=Dialect.MAJORTOMO)
    client = env.their_client(endpoint)
    assert their_call(client, b"echo", b"x", b"y") == [[b"ours", b"x", b"y"]]
    assert their_call(client, b"echo", b"stream", b"3") == STREAMED


def test_their_broker_drops_what_it_does_not_speak(env):
    endpoint = env.their_broker()
    env.our_worker(endpoint, "echo", dialect=Dialect.MAJORTOMO)
    rfc18 = env.our_client(endpoint, Dialect.V02, timeout=0.5)
    with pytest.raises(RequestTimeout):
        rfc18.request("echo", "x")  # no leading empty frame: dropped
    client = env.our_client(endpoint, Dialect.MAJORTOMO, timeout=0.5)
    with pytest.raises(RequestTimeout):
        client.request("echo")  # a request without body frames: dropped
    with pytest.raises(RequestTimeout):
        client.request("mmi.service", "echo")  # no MMI: queued for ever
    assert client.request("echo", "still", timeout=WAIT) == [b"ours", b"still"]


@pytest.mark.parametrize("liveness", [3, 40])
def test_long_handler_of_our_worker_under_their_broker(env, caplog, liveness):
    """majortomo's broker sends no heartbeat to a busy worker; ours does not count that
    silence against it (it reads no broker message while its handler runs), so a handler
    longer than heartbeat_interval * heartbeat_liveness neither loses nor re-registers."""
    caplog.set_level(logging.INFO, logger="mdp.worker")
    endpoint = env.their_broker()
    env.our_worker(endpoint, "echo", dialect=Dialect.MAJORTOMO, heartbeat_liveness=liveness)
    client = env.our_client(endpoint, Dialect.MAJORTOMO)
    assert client.request("echo", "sleep", "2") == [b"slept"]
    assert "lost the broker" not in caplog.text
    assert client.request("echo", "after") == [b"ours", b"after"]


# ---------------------------------------------------------------- (d) broker errors


def test_expiry_reaches_their_client_as_a_marked_final(env):
    endpoint = env.our_broker(request_expiry=0.5)
    client = env.their_client(endpoint)
    ((marker, code, reason, message),) = their_call(client, b"nobody", b"x")
    assert (marker, code, reason) == (BROKER_ERROR_MARKER, b"504", b"expired")
    assert b"no worker offers it" in message
    assert their_call(client, b"mmi.service", b"nobody") == [[b"404"]]  # still usable


def test_expiry_raises_request_expired_in_our_majortomo_client(env):
    endpoint = env.our_broker(request_expiry=0.5)
    client = env.our_client(endpoint, Dialect.MAJORTOMO)
    with pytest.raises(RequestExpired) as caught:
        client.request("nobody", "x")
    assert (caught.value.code, caught.value.service) == (504, "nobody")


def test_expiry_frames_for_a_majortomo_peer(env):
    endpoint = env.our_broker(request_expiry=0.5)
    sock = env.raw_dealer(endpoint)
    sock.send_multipart([b"", b"MDPC02", b"\x02", b"nobody"])
    frames = recv_raw(sock)
    assert frames[:4] == [b"", b"MDPC02", b"\x04", BROKER_ERROR_MARKER]
    assert frames[4:6] == [b"504", b"expired"] and len(frames) == 7


# ---------------------------------------------------------------- mixed


def _their_calls(endpoint: str, name: str, rounds: int) -> int:
    client = majortomo.Client(endpoint, zmq_linger=0)
    client.connect()

    def call(service: str, payload: bytes) -> list:
        client.send(service.encode(), payload)
        return client.recv_all_as_list(timeout=WAIT)

    try:
        return sum(_check(name, i, service, call)
                   for i in range(rounds) for service in ("mt", "ours"))
    finally:
        client.close()


def _our_calls(endpoint: str, name: str, rounds: int, dialect: Dialect) -> int:
    with Client(endpoint, dialect=dialect, timeout=WAIT, retries=0) as client:
        return sum(_check(name, i, service, client.request)
                   for i in range(rounds) for service in ("mt", "ours"))


def _check(name: str, i: int, service: str, call) -> int:
    payload = f"{name}-{i}".encode()
    tag = b"majortomo" if service == "mt" else b"ours"
    reply = call(service, payload)
    assert reply == [tag, payload], f"{name} got {reply!r} from {service}"
    return 1


def test_mixed_clients_against_their_worker_and_ours(env):
    endpoint = env.our_broker()
    env.their_worker(endpoint, "mt")
    env.our_worker(endpoint, "ours")
    wait_registered(endpoint, "mt")
    rounds = 15
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_their_calls, endpoint, "majortomo", rounds)]
        futures += [pool.submit(_our_calls, endpoint, d.name, rounds, d)
                    for d in (Dialect.V01, Dialect.V02, Dialect.MAJORTOMO)]
        done = [f.result(timeout=WAIT * 3) for f in futures]
    assert done == [2 * rounds] * 4
