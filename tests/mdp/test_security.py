"""CURVE security on real sockets: a broker on tcp that encrypts and admits listed keys only.

Brokers and workers run in threads of this process (on the default context, so a ZAP
handler left behind by one test would break the next) or, for the command line, as
processes started by ``mdp_system``. A refused peer is never answered: its requests end in
``RequestTimeout``, so those waits are short.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
import zmq

from mdp.aio import AsyncClient
from mdp.broker import Broker
from mdp.client import Client, Link
from mdp.client import ask as ask_once
from mdp.core import BrokerConfig
from mdp.errors import BrokerUnavailable, RequestTimeout
from mdp.security import (
    AdmittedKeys,
    ClientCurve,
    CurveError,
    ServerCurve,
    client_curve,
    create_key_pair,
    load_key_file,
    server_curve,
)
from mdp.worker import Worker

pytestmark = [pytest.mark.timeout(40),
              pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")]

MDP = [sys.executable, "-m", "mdp.cli"]
HEARTBEAT = 0.2
REFUSED = 0.6  # seconds a refused peer waits for the reply that never comes
SERVED = 15.0  # seconds an admitted request may take on a busy machine


@dataclass
class Keys:
    broker_public: Path
    broker_secret: Path
    clients: Path  # the public keys the broker admits
    client_secret: Path
    worker_secret: Path
    stranger_secret: Path  # a valid pair the broker was not told about
    impostor_public: Path  # the public key of some other broker


def pair(directory: Path, name: str, admit_into: Path | None = None) -> tuple[Path, Path]:
    public, secret = create_key_pair(directory, name)
    if admit_into is not None:
        shutil.copy(public, admit_into)
    return public, secret


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    clients, private = tmp_path / "clients", tmp_path / "private"
    clients.mkdir()
    broker_public, broker_secret = pair(tmp_path / "broker", "broker")
    return Keys(broker_public, broker_secret, clients,
                client_secret=pair(private, "client", clients)[1],
                worker_secret=pair(private, "worker", clients)[1],
                stranger_secret=pair(private, "stranger")[1],
                impostor_public=pair(tmp_path / "impostor", "broker")[0])


def start_broker(endpoint: str, keys: Keys, admit_listed: bool = True) -> Broker:
    config = BrokerConfig(heartbeat_interval=HEARTBEAT, heartbeat_liveness=5)
    broker = Broker(endpoint, config=config, curve_secret_key=keys.broker_secret,
                    curve_clients=keys.clients if admit_listed else None)
    broker.start()
    return broker


def start_worker(endpoint: str, keys: Keys, service: str = "echo",
                 secret: Path | None = None, server_key: Path | None = None) -> Worker:
    worker = Worker(endpoint, service, lambda frames: [b"echo", *frames],
                    heartbeat_interval=HEARTBEAT, curve_server_key=server_key or keys.broker_public,
                    curve_secret_key=secret)
    worker.start()
    return worker


def stop_all(*peers: Broker | Worker) -> None:
    for peer in peers:  # workers first, then their broker
        peer.stop()
        peer.join(10)
        assert not peer._thread.is_alive(), f"{peer} did not stop"


def ask(endpoint: str, server_key: Path | None, secret: Path | None,
        timeout: float = SERVED, service: str = "echo", *frames: str) -> list[bytes]:
    return ask_once(endpoint, service, *frames, timeout=timeout, curve_server_key=server_key,
                    curve_secret_key=secret)


@pytest.fixture
def bus(mdp_system, keys: Keys) -> Iterator[str]:
    """A CURVE broker that admits the listed keys, with an admitted echo worker."""
    endpoint = mdp_system.tcp()
    broker = start_broker(endpoint, keys)
    worker = start_worker(endpoint, keys, secret=keys.worker_secret)
    try:
        yield endpoint
    finally:
        stop_all(worker, broker)


# ------------------------------------------------------------------ admitted peers


def test_admitted_client_and_worker_exchange_requests(bus, keys):
    with Client(bus, timeout=SERVED, retries=0, curve_server_key=keys.broker_public,
                curve_secret_key=keys.client_secret) as client:
        for i in range(5):
            reply = client.request("echo", "hello", str(i), b"\x00\xff")
            assert [bytes(f) for f in reply] == [b"echo", b"hello", str(i).encode(), b"\x00\xff"]
        assert [bytes(f) for f in client.request("mmi.service", "echo")] == [b"200"]


def test_admitted_async_client(bus, keys):
    async def main() -> list[list[bytes]]:
        async with AsyncClient(bus, timeout=SERVED, retries=0,
                               curve_server_key=keys.broker_public,
                               curve_secret_key=keys.client_secret) as client:
            replies = await asyncio.gather(*(client.request("echo", str(i)) for i in range(4)))
        return [[bytes(f) for f in reply] for reply in replies]

    assert asyncio.run(main()) == [[b"echo", str(i).encode()] for i in range(4)]


# ------------------------------------------------------------------ refused peers


def test_client_without_curve_gets_no_reply(bus, keys):
    with pytest.raises(RequestTimeout):
        ask(bus, None, None, REFUSED, "mmi.service", "echo")
    assert ask(bus, keys.broker_public, keys.client_secret) == [b"echo"]  # still serving


def test_unlisted_client_key_is_refused(bus, keys):
    with pytest.raises(RequestTimeout):
        ask(bus, keys.broker_public, keys.stranger_secret, REFUSED)
    with pytest.raises(RequestTimeout):  # an ephemeral pair is not listed either
        ask(bus, keys.broker_public, None, REFUSED)
    assert ask(bus, keys.broker_public, keys.client_secret) == [b"echo"]


def test_wrong_server_key_is_refused(bus, keys):
    with pytest.raises(RequestTimeout):
        ask(bus, keys.impostor_public, keys.client_secret, REFUSED)


def test_refused_workers_never_register_and_still_stop(bus, keys):
    refused = [start_worker(bus, keys, "guarded", secret=keys.stranger_secret),
               start_worker(bus, keys, "guarded", keys.worker_secret, keys.impostor_public)]
    try:
        with pytest.raises(RequestTimeout):
            ask(bus, keys.broker_public, keys.client_secret, 3 * REFUSED, "guarded")
        assert ask(bus, keys.broker_public, keys.client_secret, SERVED, "mmi.service",
                   "guarded") == [b"404"]
    finally:
        stop_all(*refused)


# ------------------------------------------------------------------ any key, lifecycle


def test_broker_without_clients_dir_admits_any_key_but_no_plain_peer(mdp_system, keys):
    endpoint = mdp_system.tcp()
    broker = start_broker(endpoint, keys, admit_listed=False)
    worker = start_worker(endpoint, keys)  # an ephemeral key pair
    try:
        assert ask(endpoint, keys.broker_public, None, SERVED, "echo", "x") == [b"echo", b"x"]
        with pytest.raises(RequestTimeout):
            ask(endpoint, None, None, REFUSED)
        with pytest.raises(RequestTimeout):
            ask(endpoint, keys.impostor_public, None, REFUSED)
    finally:
        stop_all(worker, broker)


def test_curve_on_the_worker_socket_only(mdp_system, keys):
    """Workers from other machines on tcp with CURVE; clients beside it on plain ipc."""
    clients, workers = mdp_system.ipc("clients.ipc"), mdp_system.tcp().replace("127.0.0.1", "*")
    broker = Broker(clients, [workers.rpartition(":")[0] + ":0"],
                    BrokerConfig(heartbeat_interval=HEARTBEAT, heartbeat_liveness=5),
                    curve_secret_key=keys.broker_secret, curve_clients=keys.clients,
                    curve_workers_only=True)
    broker.start()
    bound = broker.bound_endpoints[1]
    assert bound.startswith("tcp://*:") and not bound.endswith(":0")
    reachable = bound.replace("*", "127.0.0.1")
    worker = start_worker(reachable, keys, secret=keys.worker_secret)
    try:
        assert ask(clients, None, None, SERVED, "echo", "x") == [b"echo", b"x"]
        assert ask(reachable, keys.broker_public, keys.client_secret, SERVED,
                   "mmi.service", "echo") == [b"200"]
        with pytest.raises(RequestTimeout):
            ask(reachable, None, None, REFUSED)  # plain on the CURVE side
        with pytest.raises(RequestTimeout):
            ask(reachable, keys.broker_public, keys.stranger_secret, REFUSED)
    finally:
        stop_all(worker, broker)
    with pytest.raises(ValueError, match="needs the broker.s key pair .* and worker_bind"):
        Broker(clients, curve_secret_key=keys.broker_secret, curve_workers_only=True)


class CurveGreeter:
    """A tcp peer that greets as a ZMTP 3 CURVE server and then says nothing, as a CURVE
    broker does until it has read the client's greeting. A plain client so always finds
    the mismatch itself, which on a busy machine it sometimes did against the real
    broker (test_curve_on_the_worker_socket_only): libzmq then drops the connection for
    good, and a DEALER without a connection blocks a plain send for ever."""

    GREETING = (b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00")
                + b"\x01" + bytes(31))

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._peers: list[socket.socket] = []
        self._thread = threading.Thread(target=self._greet_all, daemon=True)
        self._thread.start()

    def _greet_all(self) -> None:
        while True:
            try:
                peer, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._peers.append(peer)
            peer.sendall(self.GREETING)

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(10)
        for peer in self._peers:
            peer.close()


def refused_for_good(link: Link) -> bool:
    """The handshake failed and the DEALER has no connection left to send on."""
    return bool(link.refused) and not link.socket.get(zmq.EVENTS) & zmq.POLLOUT


class DescheduledClient(Client):
    """A client whose thread loses the CPU between connecting and sending, as on a busy
    machine: the peer's refusal comes first."""

    @staticmethod
    def _read_monitor(link: Link) -> None:
        support.wait_until(lambda: Client._read_monitor(link) or refused_for_good(link),
                           "the handshake to fail", 20)


class DescheduledAsyncClient(AsyncClient):
    @staticmethod
    async def _read_monitor(link: Link) -> None:
        deadline = time.monotonic() + 20
        await AsyncClient._read_monitor(link)
        while not refused_for_good(link):
            assert time.monotonic() < deadline, "the handshake did not fail"
            await asyncio.sleep(0.05)
            await AsyncClient._read_monitor(link)


@pytest.fixture
def greeter() -> Iterator[str]:
    peer = CurveGreeter()
    try:
        yield peer.endpoint
    finally:
        peer.close()


def test_a_refused_connection_fails_the_send_instead_of_blocking_it(greeter):
    with DescheduledClient(greeter, timeout=2.0, retries=0) as client:
        with pytest.raises(BrokerUnavailable, match="refused the connection: the handshake"):
            client.request("echo", "x")


def test_a_refused_connection_fails_the_async_send_instead_of_blocking_it(greeter):
    async def main() -> None:
        async with DescheduledAsyncClient(greeter, timeout=2.0, retries=0) as client:
            await asyncio.wait_for(client.request("echo", "x"), 30)

    with pytest.raises(BrokerUnavailable, match="refused the connection: the handshake"):
        asyncio.run(main())


def test_a_stopped_broker_frees_the_context_for_the_next(mdp_system, keys):
    for _ in range(2):  # the second needs the first's ZAP handler gone from the context
        endpoint = mdp_system.tcp()
        broker = start_broker(endpoint, keys)
        try:
            assert ask(endpoint, keys.broker_public, keys.client_secret, SERVED,
                       "mmi.service", "echo") == [b"404"]
        finally:
            stop_all(broker)


# ------------------------------------------------------------------ keys in memory


@dataclass
class Pairs:
    """Key pairs that never touch the disk: the broker's, two admitted ones, a stranger's."""

    broker: ServerCurve
    client: tuple[bytes, bytes]
    worker: tuple[bytes, bytes]
    stranger: tuple[bytes, bytes]

    def peer(self, pair: tuple[bytes, bytes]) -> ClientCurve:
        return ClientCurve(self.broker.public_key, *pair)


@pytest.fixture
def pairs() -> Pairs:
    return Pairs(ServerCurve(*zmq.curve_keypair()), zmq.curve_keypair(), zmq.curve_keypair(),
                 zmq.curve_keypair())


def memory_broker(endpoint: str, pairs: Pairs, admitted: list[bytes] | None) -> Broker:
    broker = Broker(endpoint, config=BrokerConfig(heartbeat_interval=HEARTBEAT,
                                                  heartbeat_liveness=5),
                    curve=pairs.broker, curve_clients=admitted)
    broker.start()
    return broker


def memory_worker(endpoint: str, curve: ClientCurve) -> Worker:
    worker = Worker(endpoint, "echo", lambda frames: [b"echo", *frames],
                    heartbeat_interval=HEARTBEAT, curve=curve)
    worker.start()
    return worker


def registered(endpoint: str, curve: ClientCurve) -> bool:
    return ask_once(endpoint, "mmi.service", "echo", timeout=SERVED, curve=curve) == [b"200"]


def test_keys_in_memory_encrypt_and_admit_listed_peers(mdp_system, pairs):
    endpoint = mdp_system.tcp()
    broker = memory_broker(endpoint, pairs, [pairs.client[0], pairs.worker[0]])
    worker = memory_worker(endpoint, pairs.peer(pairs.worker))
    try:
        client = pairs.peer(pairs.client)
        mdp_system.wait_until(lambda: registered(endpoint, client), "the worker to register")
        assert ask_once(endpoint, "echo", "x", timeout=SERVED, curve=client) == [b"echo", b"x"]

        async def in_flight() -> list[list]:
            async with AsyncClient(endpoint, timeout=SERVED, retries=0, curve=client) as aio:
                return await asyncio.gather(*(aio.request("echo", str(i)) for i in range(3)))

        assert asyncio.run(in_flight()) == [[b"echo", str(i).encode()] for i in range(3)]
        with pytest.raises(RequestTimeout):  # a valid pair, but not listed
            ask_once(endpoint, "echo", timeout=REFUSED, curve=pairs.peer(pairs.stranger))
        with pytest.raises(RequestTimeout):  # no CURVE at all
            ask_once(endpoint, "echo", timeout=REFUSED)
    finally:
        stop_all(worker, broker)


def test_keys_admitted_while_the_broker_runs(mdp_system, pairs):
    """A broker that admits nobody yet; a client and a worker are let in by ``admit``."""
    endpoint = mdp_system.tcp()
    broker = memory_broker(endpoint, pairs, [])
    worker = memory_worker(endpoint, pairs.peer(pairs.worker))  # refused: it retries
    client = pairs.peer(pairs.client)
    try:
        with pytest.raises(RequestTimeout):
            ask_once(endpoint, "mmi.service", "echo", timeout=REFUSED, curve=client)
        broker.admit(pairs.client[0])
        assert ask_once(endpoint, "mmi.service", "echo", timeout=SERVED, curve=client) == \
            [b"404"]  # the client is in, the worker not yet
        broker.admit(pairs.worker[0].decode())  # text does as well
        mdp_system.wait_until(lambda: registered(endpoint, client),
                              "the worker to be admitted and register")
        with pytest.raises(RequestTimeout):
            ask_once(endpoint, "echo", timeout=REFUSED, curve=pairs.peer(pairs.stranger))
    finally:
        stop_all(worker, broker)


def test_a_key_admitted_beside_a_clients_directory(mdp_system, keys):
    endpoint = mdp_system.tcp()
    broker = start_broker(endpoint, keys)
    try:
        with pytest.raises(RequestTimeout):
            ask(endpoint, keys.broker_public, keys.stranger_secret, REFUSED, "mmi.service")
        broker.admit(load_key_file(keys.stranger_secret)[0])
        assert ask(endpoint, keys.broker_public, keys.stranger_secret, SERVED, "mmi.service",
                   "echo") == [b"404"]
        assert ask(endpoint, keys.broker_public, keys.client_secret, SERVED, "mmi.service",
                   "echo") == [b"404"]  # the directory's keys are still admitted
    finally:
        stop_all(broker)


def test_a_broker_admitting_any_key_takes_admit_as_a_no_op_and_a_plain_one_refuses_it(pairs):
    broker = Broker("tcp://127.0.0.1:1", curve=pairs.broker)
    broker.admit(pairs.client[0])
    assert broker.admitted is None  # still any key
    with pytest.raises(ValueError, match="not a CURVE key"):
        broker.admit(b"short")
    with pytest.raises(ValueError, match="no CURVE key pair"):
        Broker("tcp://127.0.0.1:1").admit(pairs.client[0])


def test_admitted_keys_answer_the_authenticator(tmp_path, keys):
    from_directory = AdmittedKeys.of(keys.clients)
    client_key = load_key_file(keys.client_secret)[0]
    stranger_key = load_key_file(keys.stranger_secret)[0]
    assert from_directory.callback("*", client_key) and client_key in from_directory
    assert not from_directory.callback("*", stranger_key)
    from_directory.admit(stranger_key.decode())
    assert from_directory.callback("", stranger_key)
    assert AdmittedKeys.of(str(keys.clients)).callback("*", client_key)
    assert not AdmittedKeys.of([]).callback("*", client_key)
    with pytest.raises(TypeError, match="as a list"):
        AdmittedKeys.of(client_key)
    with pytest.raises(ValueError, match="not a CURVE key"):
        AdmittedKeys.of([client_key[:-1]])


def test_keys_in_memory_are_checked_and_never_given_twice(pairs, keys):
    public, secret = zmq.curve_keypair()
    as_text = ServerCurve(public.decode(), secret.decode())
    assert (as_text.public_key, as_text.secret_key) == (public, secret)
    with pytest.raises(ValueError, match="does not belong"):
        ServerCurve(pairs.client[0], secret)
    with pytest.raises(ValueError, match="not a CURVE key") as caught:
        ClientCurve(public, public, secret[:-1] + b"~")  # "~" is not Z85
    assert secret[:-1].decode() not in str(caught.value)  # a secret is never shown
    client = pairs.peer(pairs.client)
    both = "either in memory .* or as key files"
    with pytest.raises(ValueError, match=both):
        Broker("tcp://127.0.0.1:1", curve=pairs.broker, curve_secret_key=keys.broker_secret)
    with pytest.raises(ValueError, match=both):
        Worker("tcp://127.0.0.1:1", "echo", list, curve=client,
               curve_server_key=keys.broker_public)
    with pytest.raises(ValueError, match=both):
        Client("tcp://127.0.0.1:1", curve=client, curve_secret_key=keys.client_secret)
    with pytest.raises(ValueError, match=both):
        AsyncClient("tcp://127.0.0.1:1", curve=client, curve_server_key=keys.broker_public)
    with pytest.raises(ValueError, match=both):
        ask_once("tcp://127.0.0.1:1", "echo", curve=client, curve_server_key=keys.broker_public)


# ------------------------------------------------------------------ key files


def test_key_pair_files(tmp_path):
    public, secret = create_key_pair(tmp_path / "keys", "alice")
    assert (public.name, secret.name) == ("alice.key", "alice.key_secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "secret-key" not in public.read_text()
    loaded = client_curve(public, secret)
    assert loaded.public_key == loaded.server_key == server_curve(secret).public_key
    with pytest.raises(CurveError, match="exists"):
        create_key_pair(tmp_path / "keys", "alice")


def test_unusable_keys_are_reported(tmp_path, keys):
    with pytest.raises(CurveError, match="cannot read"):
        Client("tcp://127.0.0.1:1", curve_server_key=tmp_path / "missing.key")
    with pytest.raises(CurveError, match="no secret key"):
        Broker("tcp://127.0.0.1:1", curve_secret_key=keys.broker_public)
    with pytest.raises(CurveError, match="clients directory"):
        Broker("tcp://127.0.0.1:1", curve_secret_key=keys.broker_secret,
               curve_clients=tmp_path / "nowhere")
    garbled = tmp_path / "garbled.key"
    garbled.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(CurveError, match="malformed"):
        Worker("tcp://127.0.0.1:1", "echo", list, curve_server_key=garbled)
    with pytest.raises(ValueError, match="public key"):
        Client("tcp://127.0.0.1:1", curve_secret_key=keys.client_secret)
    with pytest.raises(ValueError, match="curve_secret_key"):
        Broker("tcp://127.0.0.1:1", curve_clients=keys.clients)


# ------------------------------------------------------------------ command line


def mdp(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*MDP, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_cli_keys_broker_echo_call_status(mdp_system, tmp_path):
    keys, clients = tmp_path / "keys", tmp_path / "clients"
    for name in ("broker", "client", "worker"):
        made = mdp("keys", keys, name)
        assert made.returncode == 0, made.stderr
        assert made.stdout.split() == [str(keys / f"{name}.key"), str(keys / f"{name}.key_secret")]
    clients.mkdir()
    for name in ("client", "worker"):
        shutil.copy(keys / f"{name}.key", clients)
    endpoint = mdp_system.tcp()
    mdp_system.spawn("broker", [*MDP, "broker", "--bind", endpoint, "--heartbeat", "0.2",
                                "--curve-secret-key", str(keys / "broker.key_secret"),
                                "--curve-clients", str(clients)])
    mdp_system.spawn("echo", [*MDP, "echo", "--broker", endpoint, "--heartbeat", "0.2",
                              "--curve-server-key", str(keys / "broker.key"),
                              "--curve-secret-key", str(keys / "worker.key_secret")])
    client_keys = ("--curve-server-key", keys / "broker.key",
                   "--curve-secret-key", keys / "client.key_secret")
    mdp_system.wait_until(lambda: ask(endpoint, keys / "broker.key", keys / "client.key_secret",
                                      SERVED, "mmi.service", "echo") == [b"200"],
                          "the echo worker to register with the CURVE broker")

    called = mdp("call", "echo", "hello", "--broker", endpoint, *client_keys)
    assert (called.returncode, called.stdout) == (0, "hello\n"), called.stderr
    status = mdp("status", "--json", "--broker", endpoint, *client_keys)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["services"]["echo"]["workers"] == 1

    plain = mdp("call", "echo", "hello", "--broker", endpoint, "--timeout", str(REFUSED))
    assert plain.returncode == 1 and "BrokerUnavailable" in plain.stderr
    assert "CURVE on one side only" in plain.stderr
    ephemeral = mdp("call", "echo", "--broker", endpoint, "--timeout", str(REFUSED),
                    "--curve-server-key", keys / "broker.key")
    assert ephemeral.returncode == 1 and "BrokerUnavailable" in ephemeral.stderr
    assert "authentication was refused" in ephemeral.stderr
