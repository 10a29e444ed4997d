"""System tests: brokers, workers and clients as real processes on real sockets.

Workers run ``helpers/worker.py``, whose replies start with the worker's pid, so a test can
tell which process served a request. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import zmq

from mdp import protocol as p
from mdp.aio import AsyncClient
from mdp.client import Client
from mdp.errors import (
    AttemptsExhausted,
    BrokerStopping,
    BrokerUnavailable,
    QueueFull,
    RequestExpired,
    RequestTimeout,
    ServiceNameTooLong,
    WorkerError,
)

pytestmark = pytest.mark.timeout(45)

MDP = [sys.executable, "-m", "mdp.cli"]
CLI_TIMEOUT = 30


def call(endpoint: str, service: str, *frames: str | bytes, timeout: float = 15.0,
         retries: int = 0, dialect: p.Dialect = p.Dialect.V02) -> list[bytes]:
    with Client(endpoint, timeout=timeout, retries=retries, dialect=dialect) as client:
        return [bytes(f) for f in client.request(service, *frames)]


def served_by(endpoint: str, service: str, *frames: str | bytes) -> bytes:
    """Send a request to a helper worker and return the pid that answered it."""
    return call(endpoint, service, *frames)[0]


def read_marker(system, path: Path) -> int:
    """Wait for a worker's 'mark' command to name the pid that took the request."""
    system.wait_until(path.exists, f"a worker to write {path.name}")
    return int(path.read_bytes())


def send_raw(endpoint: str, frames: list[bytes]) -> zmq.Socket:
    """Send one message from a bare DEALER socket and hand the socket back (caller closes)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart(frames)
    return sock


def run_cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*MDP, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------ transports


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_one_endpoint(mdp_system, transport):
    endpoint = mdp_system.ipc("bus") if transport == "ipc" else mdp_system.tcp()
    _, (worker,) = mdp_system.serve(endpoint, "echo", 1)
    assert call(endpoint, "echo", "echo", "hello", b"\x00\xff") == \
        [worker.pid_bytes, b"hello", b"\x00\xff"]


def test_ipc_and_tcp_on_one_broker(mdp_system):
    ipc, tcp = mdp_system.ipc("bus"), mdp_system.tcp()
    mdp_system.broker(ipc, tcp)
    on_ipc = mdp_system.worker(ipc, "echo")
    on_tcp = mdp_system.worker(tcp, "echo")
    mdp_system.wait_workers(tcp, "echo", 2)
    pids = {served_by(endpoint, "echo", "echo") for endpoint in (ipc, tcp, ipc, tcp)}
    assert pids == {on_ipc.pid_bytes, on_tcp.pid_bytes}


def test_separate_worker_endpoint(mdp_system):
    clients, workers = mdp_system.ipc("clients"), mdp_system.tcp()
    mdp_system.broker(clients, worker_bind=[workers])
    (worker,) = [mdp_system.worker(workers, "echo")]
    mdp_system.wait_workers(clients, "echo", 1)
    assert call(clients, "echo", "echo", "x") == [worker.pid_bytes, b"x"]


# ------------------------------------------------------------------ load


def client_session(endpoint: str, name: str, count: int) -> list[tuple[bytes, bytes, bytes]]:
    """(sent, echoed, pid) for ``count`` requests over one connection."""
    results = []
    with Client(endpoint, timeout=15, retries=0) as client:
        for index in range(count):
            body = f"{name}-{index}".encode()
            pid, echoed = (bytes(f) for f in client.request("echo", "echo", body))
            results.append((body, echoed, pid))
    return results


def test_many_clients_many_workers(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, workers = mdp_system.serve(endpoint, "echo", 3)
    with ThreadPoolExecutor(4) as pool:
        sessions = [pool.submit(client_session, endpoint, f"c{i}", 50) for i in range(4)]
        results = [r for session in sessions for r in session.result(timeout=40)]
    assert len(results) == 200
    assert all(sent == echoed for sent, echoed, _ in results)
    load = Counter(pid for _, _, pid in results)
    assert set(load) == {w.pid_bytes for w in workers}, load
    assert mdp_system.service(endpoint, "echo")["served"] == 200


def test_async_client_many_in_flight(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, workers = mdp_system.serve(endpoint, "echo", 4)

    async def run() -> list[list]:
        async with AsyncClient(endpoint, max_in_flight=32, timeout=30, retries=0) as client:
            return await asyncio.gather(*(client.request("echo", "echo", str(i))
                                          for i in range(500)))

    replies = asyncio.run(run())
    assert [bytes(reply[1]) for reply in replies] == [str(i).encode() for i in range(500)]
    pids = {bytes(reply[0]) for reply in replies}
    assert pids <= {w.pid_bytes for w in workers} and len(pids) > 1


# ------------------------------------------------------------------ failures


def test_worker_killed_mid_request(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, workers = mdp_system.serve(endpoint, "slow", 2)
    marker = mdp_system.directory / "marker"
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(served_by, endpoint, "slow", "mark", str(marker), "20")
        victim = read_marker(mdp_system, marker)
        os.kill(victim, signal.SIGKILL)
        pid = int(reply.result(timeout=30))
    assert pid != victim and pid in {w.pid for w in workers}
    killed = next(w for w in workers if w.pid == victim)
    assert killed.wait() == -signal.SIGKILL


def test_poisoned_request_is_given_up(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, workers = mdp_system.serve(endpoint, "fragile", 3, max_attempts=2)
    with pytest.raises(AttemptsExhausted) as caught:
        call(endpoint, "fragile", "exit", timeout=30)
    assert caught.value.service == "fragile"
    # The broker hears of a death when the connection closes, a moment before the
    # process can be reaped: wait for both.
    mdp_system.wait_until(lambda: len([w for w in workers if not w.alive()]) == 2,
                          "the poisoned workers to die")
    (survivor,) = [w for w in workers if w.alive()]
    assert served_by(endpoint, "fragile", "echo") == survivor.pid_bytes
    state = mdp_system.service(endpoint, "fragile")
    assert state["failed"] == 1 and state["workers"] == 1


def test_handler_exception_is_reported_and_worker_goes_on(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, (worker,) = mdp_system.serve(endpoint, "echo", 1)
    with pytest.raises(WorkerError) as caught:
        call(endpoint, "echo", "raise", "kaput")
    assert caught.value.error_type == "RuntimeError"
    assert "kaput" in str(caught.value)
    assert served_by(endpoint, "echo", "echo") == worker.pid_bytes
    assert mdp_system.service(endpoint, "echo")["failed"] == 1


def keep_calling(endpoint: str, stop: threading.Event) -> list[tuple[bytes, list[bytes]]]:
    """Echo requests one after another until ``stop``; a request the broker lost is sent
    again once it is back."""
    results = []
    with Client(endpoint, timeout=20, retries=5) as client:
        while not stop.is_set():
            body = str(len(results)).encode()
            results.append((body, [bytes(f) for f in client.request("echo", "echo", body)]))
    return results


def test_broker_restart_while_clients_and_workers_go_on(mdp_system):
    endpoint = mdp_system.ipc("bus")
    broker, workers = mdp_system.serve(endpoint, "echo", 2)
    pids = {w.pid_bytes for w in workers}
    stop = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        steady = pool.submit(keep_calling, endpoint, stop)
        try:
            mdp_system.wait_until(lambda: mdp_system.service(endpoint, "echo")["served"] >= 5,
                                  "the steady client to get going")
            broker.signal(signal.SIGKILL)
            assert broker.wait() == -signal.SIGKILL
            pending = pool.submit(call, endpoint, "echo", "echo", "after", timeout=20,
                                  retries=5)
            mdp_system.broker(endpoint)
            mdp_system.wait_workers(endpoint, "echo", 2)
            assert pending.result(timeout=40) in ([pid, b"after"] for pid in pids)
            mdp_system.wait_until(lambda: mdp_system.service(endpoint, "echo")["served"] >= 5,
                                  "the steady client to go on after the restart")
        finally:
            stop.set()
        results = steady.result(timeout=40)
    assert all(reply[1:] == [body] and reply[0] in pids for body, reply in results)
    assert all(w.alive() for w in workers)


def test_long_handler_keeps_its_worker(mdp_system):
    endpoint = mdp_system.ipc("bus")
    strict = {"heartbeat": 0.2, "liveness": 3}  # dropped after 0.6 s without a heartbeat
    _, (worker,) = mdp_system.serve(endpoint, "slow", 1, worker_options=strict, **strict)
    (before,) = mdp_system.service_workers(endpoint, "slow")
    assert served_by(endpoint, "slow", "sleep", "2.0") == worker.pid_bytes
    (after,) = mdp_system.service_workers(endpoint, "slow")
    assert after["id"] == before["id"] and after["served"] == 1  # the same registration


# ------------------------------------------------------------------ shutdown


def test_broker_sigterm_disconnects_workers_and_cleans_up(mdp_system):
    endpoint = mdp_system.ipc("bus")
    broker, workers = mdp_system.serve(endpoint, "echo", 2)
    broker.signal(signal.SIGTERM)
    assert broker.wait() == 0, broker.log()
    assert not Path(endpoint.removeprefix("ipc://")).exists()
    for worker in workers:
        mdp_system.wait_until(lambda w=worker: "the broker sent DISCONNECT" in w.log(),
                              f"{worker} to log the DISCONNECT")
        mdp_system.wait_until(lambda w=worker: "reconnecting in" in w.log(),
                              f"{worker} to back off and reconnect")
    assert all(w.alive() for w in workers)


def test_worker_sigterm_finishes_its_request(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, (worker,) = mdp_system.serve(endpoint, "slow", 1)
    marker = mdp_system.directory / "marker"
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(served_by, endpoint, "slow", "mark", str(marker), "2.0")
        assert read_marker(mdp_system, marker) == worker.pid
        worker.signal(signal.SIGTERM)
        assert reply.result(timeout=30) == worker.pid_bytes
    assert worker.wait() == 0, worker.log()
    mdp_system.wait_workers(endpoint, "slow", 0)


def test_worker_idle_timeout(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.broker(endpoint)
    worker = mdp_system.spawn("echo", [*MDP, "echo", "-b", endpoint, "-v",
                                       "--idle-timeout", "1", "--heartbeat", "0.2"])
    assert worker.wait() == 0, worker.log()
    assert "no request for 1 s; leaving" in worker.log()
    mdp_system.wait_until(  # it registered, then said goodbye
        lambda: (mdp_system.status(endpoint) or {"services": {}})["services"]
        .get("echo", {}).get("workers") == 0, "the broker to forget the worker")


# ------------------------------------------------------------------ queues


def test_request_expires_without_a_worker(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.broker(endpoint, expiry=1.0)
    with pytest.raises(RequestExpired) as caught:
        call(endpoint, "nobody", "hello", timeout=30)
    assert caught.value.service == "nobody" and "no worker" in caught.value.message
    assert mdp_system.service(endpoint, "nobody")["expired"] == 1


def test_waiting_request_is_served_by_a_late_worker(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.broker(endpoint, expiry=30)
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(call, endpoint, "late", "echo", "waited", timeout=30)
        mdp_system.wait_until(lambda: mdp_system.service(endpoint, "late")["queued"] == 1,
                              "the request to be queued")
        worker = mdp_system.worker(endpoint, "late")
        assert reply.result(timeout=35) == [worker.pid_bytes, b"waited"]


def test_queue_limit(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.broker(endpoint, queue_limit=2)
    waiting = [send_raw(endpoint, p.client_request(p.Dialect.V02, b"q", [b"x"]))
               for _ in range(2)]
    try:
        mdp_system.wait_until(lambda: mdp_system.service(endpoint, "q")["queued"] == 2,
                              "two queued requests")
        with pytest.raises(QueueFull) as caught:
            call(endpoint, "q", "one too many")
        assert caught.value.service == "q"
        assert mdp_system.service(endpoint, "q")["rejected"] == 1
    finally:
        for sock in waiting:
            sock.close()


# ------------------------------------------------------------------ streaming


def test_streaming_to_v02_and_v01_clients(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, (worker,) = mdp_system.serve(endpoint, "stream", 1)
    pid = worker.pid_bytes
    with Client(endpoint, timeout=15, retries=0) as client:
        parts = [[bytes(f) for f in part] for part in client.stream("stream", "stream", "3")]
    assert parts == [[pid, b"0"], [pid, b"1"], [pid, b"2"]]
    with Client(endpoint, timeout=15, retries=0, dialect=p.Dialect.V01) as client:
        parts = [[bytes(f) for f in part] for part in client.stream("stream", "stream", "3")]
    assert parts == [[pid, b"0", pid, b"1", pid, b"2"]]


# ------------------------------------------------------------------ robustness

HEADERS = [b"", b"MDPC02", b"MDPW02", b"MDPC01", b"MDPW01", b"MDPX99"]

MALFORMED = [
    [b""], [b"MDPC02"], [b"MDPC02", b"\x01"], [b"MDPC02", b"\x07", b"echo"],
    [b"MDPC02", b"\x01", b""], [b"", b"MDPC01"], [b"", b"MDPW01"], [b"", b"junk", b"x"],
    [b"MDPW02"], [b"MDPW02", b"\x09"], [b"MDPW02", b"\x01"], [b"MDPW02", b"\x04"],
    [b"MDPW02", b"\x04", b"12345678"], [b"MDPW02", b"\x03", b"addr", b"not-empty"],
    [b"MDPW02", b"\x05"], [b"MDPW02", b"\x06"], [b"MDPW02", b"\x01", b"mmi.fake"],
    [b"MDPW02", b"\x01", b"fake"], [b"MDPW02", b"\x01", b"fake"],
    [b"MDPW02", b"\x04", b"\x00" * 8, b"", b"forged"], [b"\xff" * 300],
]


def random_messages(seed: int, count: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    messages = []
    for _ in range(count):
        frames = [rng.randbytes(rng.randint(0, 10)) for _ in range(rng.randint(0, 5))]
        if rng.random() < 0.7:
            frames = [rng.choice(HEADERS), bytes([rng.randint(0, 9)]), *frames]
        messages.append(frames or [b""])
    return messages


def still_answers(sock: zmq.Socket) -> bool:
    """After all the garbage, ask on the same socket; what came before is handled by then."""
    sock.send_multipart(p.client_request(p.Dialect.V02, b"mmi.service", [b"echo"]))
    deadline = time.monotonic() + 20
    while sock.poll(max(0.0, deadline - time.monotonic()) * 1000):
        frames = sock.recv_multipart()
        if frames[:3] == [p.CLIENT_V02, p.C_FINAL_V02, b"mmi.service"]:
            return frames[3:] == [b"200"]
    return False


def test_garbage_never_crashes_the_broker(mdp_system):
    endpoint = mdp_system.ipc("bus")
    broker, (worker,) = mdp_system.serve(endpoint, "echo", 1)
    socks = [zmq.Context.instance().socket(zmq.DEALER) for _ in range(3)]
    try:
        for seed, sock in enumerate(socks):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            for frames in MALFORMED + random_messages(seed, 200):
                sock.send_multipart(frames)
        assert all(still_answers(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    assert broker.alive()
    assert mdp_system.status(endpoint)["counters"]["dropped_messages"] >= len(MALFORMED)
    assert served_by(endpoint, "echo", "echo") == worker.pid_bytes


# ------------------------------------------------------------------ command line


def test_cli_call_and_status(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.broker(endpoint, expiry=1.0)
    mdp_system.spawn("echo", [*MDP, "echo", "-b", endpoint, "--heartbeat", "0.2"])
    mdp_system.wait_workers(endpoint, "echo", 1)
    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(run_cli, *args, "-b", endpoint) for args in
                (["call", "echo", "hello", "world"], ["status"], ["call", "nobody"])]
        called, table, failed = (run.result(timeout=CLI_TIMEOUT) for run in runs)
    assert called.returncode == 0, called.stderr
    assert called.stdout.splitlines() == ["hello", "world"]
    assert table.returncode == 0, table.stderr
    assert "echo" in table.stdout and "served" in table.stdout
    assert failed.returncode == 1 and "RequestExpired" in failed.stderr

    as_json = run_cli("status", "-b", endpoint, "--json")
    assert as_json.returncode == 0, as_json.stderr
    state = json.loads(as_json.stdout)["services"]["echo"]
    assert state["workers"] == 1 and state["served"] == 1


def test_cli_status_without_broker(mdp_system):
    result = run_cli("status", "-b", mdp_system.ipc("nothing"), "--timeout", "0.5")
    assert result.returncode == 1
    assert "no broker answered" in result.stderr


# ------------------------------------------------------------------ closed connections


def test_a_killed_idle_worker_is_forgotten_without_waiting_for_heartbeats(mdp_system):
    endpoint = mdp_system.ipc("bus")
    # 0.2 s x 1000: heartbeats would take 200 s to give the dead worker up
    _, (victim, survivor) = mdp_system.serve(endpoint, "echo", 2, liveness=1000)
    victim.signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    mdp_system.wait_workers(endpoint, "echo", 1)
    assert [served_by(endpoint, "echo", "echo") for _ in range(3)] == [survivor.pid_bytes] * 3


def test_a_request_whose_client_went_away_is_never_run(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.broker(endpoint)
    sock = send_raw(endpoint, p.client_request(p.Dialect.V02, b"late", [b"work", b"0",
                                                                      b"forgotten"]))
    mdp_system.wait_until(lambda: mdp_system.service(endpoint, "late")["queued"] == 1,
                          "the request to be queued")
    sock.close()
    mdp_system.wait_until(lambda: mdp_system.service(endpoint, "late")["abandoned"] == 1,
                          "the broker to drop the request")
    assert mdp_system.service(endpoint, "late")["queued"] == 0
    worker = mdp_system.worker(endpoint, "late")
    assert call(endpoint, "late", "work", "0", "wanted") == [worker.pid_bytes, b"wanted"]
    (registered,) = mdp_system.service_workers(endpoint, "late")
    assert registered["served"] == 1  # the forgotten one never reached it


def test_a_slow_reply_is_waited_for_not_sent_again(mdp_system):
    endpoint = mdp_system.ipc("bus")
    _, workers = mdp_system.serve(endpoint, "slow", 2)
    log = mdp_system.directory / "work.log"
    with Client(endpoint, timeout=1.0, retries=2) as client:
        with pytest.raises(RequestTimeout) as caught:
            client.request("slow", "work", "3", "once", str(log))
    assert type(caught.value) is RequestTimeout  # the broker is there: not unavailable
    assert "is a worker serving 'slow'" in str(caught.value)
    mdp_system.wait_until(lambda: mdp_system.service(endpoint, "slow")["served"] == 1,
                          "the worker to finish")
    assert len(log.read_text().splitlines()) == 1  # one worker ran it, once
    assert sum(w["served"] for w in mdp_system.service_workers(endpoint, "slow")) == 1


def test_a_stopping_broker_answers_the_requests_it_holds(mdp_system):
    endpoint = mdp_system.ipc("bus")
    broker, (worker,) = mdp_system.serve(endpoint, "slow", 1)
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(call, endpoint, "slow", "sleep", "600", timeout=60)
        queued = pool.submit(call, endpoint, "nobody", "x", timeout=60)
        mdp_system.wait_until(
            lambda: (mdp_system.service(endpoint, "slow")["busy"],
                     mdp_system.service(endpoint, "nobody")["queued"]) == (1, 1),
            "one request with the worker and one queued")
        broker.signal(signal.SIGTERM)
        for future, service in ((held, "slow"), (queued, "nobody")):
            with pytest.raises(BrokerStopping) as caught:
                future.result(timeout=40)
            assert (caught.value.code, caught.value.reason) == (503, "broker-stopping")
            assert caught.value.service == service
    assert broker.wait() == 0
    worker.signal(signal.SIGKILL)  # rather than wait for its 600 s request to end


def test_the_asyncio_client_gives_up_a_slow_reply_after_its_timeout(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.serve(endpoint, "slow", 1)

    async def ask(timeout: float) -> list:
        async with AsyncClient(endpoint, timeout=timeout, retries=0) as client:
            return await client.request("slow", "work", "0.8", "token")

    start = time.monotonic()
    with pytest.raises(RequestTimeout, match="within 0.3 s"):
        asyncio.run(ask(0.3))
    assert time.monotonic() - start < 0.75  # not the slow reply's 0.8 s, nor LOOK_EVERY's
    assert asyncio.run(ask(5.0))[-1] == b"token"  # a timeout beyond LOOK_EVERY: waited


def test_no_broker_is_a_clear_error_without_waiting_the_request_timeout(mdp_system):
    nowhere = mdp_system.ipc("nobody-here")
    with Client(nowhere, timeout=600, broker_timeout=1.0) as client:
        with pytest.raises(BrokerUnavailable) as caught:
            client.request("echo", "x")
    assert nowhere in str(caught.value) and "mdp broker --bind" in str(caught.value)

    async def ask() -> None:
        async with AsyncClient(nowhere, timeout=600, broker_timeout=1.0) as client:
            await client.request("echo", "x")

    with pytest.raises(BrokerUnavailable):
        asyncio.run(ask())


def test_an_idle_worker_without_a_broker_leaves(mdp_system):
    """Its idle clock runs on while it reconnects (0.2 s x 3 of silence each time)."""
    worker = mdp_system.worker(mdp_system.ipc("nobody-here"), "echo", liveness=3,
                               idle_timeout=2.0)
    assert worker.wait() == 0, worker.log()
    assert "no request for 2 s; leaving" in worker.log()


# ------------------------------------------------------------------ bounds


def test_many_service_names_leave_nothing_behind(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.broker(endpoint, expiry=1.0)
    count = 3000
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        for n in range(count):
            sock.send_multipart(p.client_request(p.Dialect.V02, b"name-%d" % n, [b"x"]))
        for _ in range(count):  # every one expires, 504
            assert sock.poll(30_000), "a request was not answered"
            assert sock.recv_multipart()[3:6] == [b"\x00mdp.broker-error", b"504", b"expired"]
    finally:
        sock.close()
    assert call(endpoint, "mmi.services") == [b"[]"]
    services = mdp_system.status(endpoint)["services"]
    assert len(services) == 1000  # the most recent forgotten ones, counters kept
    assert services[f"name-{count - 1}"]["expired"] == 1
    with pytest.raises(ServiceNameTooLong) as caught:
        call(endpoint, "n" * 256 * 1024, "x")
    assert caught.value.code == 400 and "262144 bytes" in caught.value.message


def test_the_ipc_socket_file_is_owner_only_whatever_the_umask(mdp_system):
    modes = {}
    for name, options in (("default", []), ("group", ["--ipc-mode", "660"])):
        endpoint = mdp_system.ipc(name)
        command = " ".join([*MDP, "broker", "--bind", endpoint, *options])
        mdp_system.spawn("broker", ["sh", "-c", f"umask 000 && exec {command}"])
        mdp_system.wait_until(lambda e=endpoint: mdp_system.status(e), f"a broker at {endpoint}")
        modes[name] = Path(endpoint.removeprefix("ipc://")).stat().st_mode & 0o777
    assert modes == {"default": 0o600, "group": 0o660}
    assert [p.name for p in mdp_system.directory.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ chaos


def numbered_calls(endpoint: str, name: str, count: int) -> list[tuple[bytes, list[bytes]]]:
    with Client(endpoint, timeout=60, retries=20, broker_timeout=30) as client:
        return [(token, [bytes(f) for f in client.request("chaos", "work", "0.1", token)])
                for token in (f"{name}-{i}".encode() for i in range(count))]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chaos_every_request_answered_once(mdp_system):
    """Workers SIGKILLed every half second (and replaced), the broker SIGKILLed and
    restarted once: every request is answered, once, with its own answer."""
    endpoint = mdp_system.ipc("bus")
    broker, workers = mdp_system.serve(endpoint, "chaos", 4, max_attempts=1000)
    clients, per_client = 4, 75
    rng = random.Random(7)
    with ThreadPoolExecutor(clients) as pool:
        runs = [pool.submit(numbered_calls, endpoint, f"c{i}", per_client)
                for i in range(clients)]
        restarted = False
        while not all(run.done() for run in runs):
            served = (mdp_system.status(endpoint) or {"services": {}})["services"] \
                .get("chaos", {}).get("served", 0)
            if not restarted and served >= 100:
                broker.signal(signal.SIGKILL)
                broker.wait()
                broker = mdp_system.broker(endpoint, max_attempts=1000, wait=False)
                restarted = True
            victim = rng.choice([w for w in workers if w.alive()])
            victim.signal(signal.SIGKILL)
            workers.append(mdp_system.worker(endpoint, "chaos"))
            wait(runs, timeout=0.5)  # the pace of the killing, cut short when all are done
        results = [result for run in runs for result in run.result()]
    assert restarted
    assert len(results) == clients * per_client
    assert len({token for token, _ in results}) == clients * per_client
    assert all(reply[1:] == [token] for token, reply in results), "a wrong or duplicate answer"
