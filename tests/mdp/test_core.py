"""Tests of the broker's sans-IO bookkeeping (mdp/core.py) with an explicit clock, no
sockets: routing, queues, heartbeats, retries, expiry, MMI, errors and events, the
recorded exchanges of protocol/vectors/mdp.json, and a random-interleaving state machine
that checks the broker's invariants after every step."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mdp import __version__
from mdp import protocol as p
from mdp.core import (
    BrokerConfig,
    BrokerCore,
    Event,
    EventKind,
    ReplyFacts,
    StateError,
    WorkerState,
    peer_name,
)
from mdp.errors import (
    BROKER_ERROR_MARKER,
    WORKER_ERROR_MARKER,
    AttemptsExhausted,
    BrokerError,
    BrokerStopping,
    QueueFull,
    RequestExpired,
    ServiceNameTooLong,
    ServiceStartFailed,
    broker_error_body,
    decode_broker_error,
    decode_worker_error,
    is_worker_error,
    reserved_marker,
    worker_error_body,
)
from mdp.identities import client_of
from mdp.timings import BOUNDS

V02, V01, MT = p.Dialect.V02, p.Dialect.V01, p.Dialect.MAJORTOMO
DIALECTS = list(p.Dialect)
VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "mdp.json"
ID1, ID2, ID3, ID4 = (i.to_bytes(8, "big") for i in (1, 2, 3, 4))


class Bus:
    """A BrokerCore with named peers of known role and dialect; decodes what it sends.

    Decoding every outgoing message with the receiver's own parser also checks that the
    broker always answers a peer in that peer's dialect.
    """

    def __init__(self, now: float = 0.0, **config: object):
        self.core = BrokerCore(BrokerConfig(**config), now)
        self.now = now
        self.roles: dict[bytes, tuple[str, p.Dialect]] = {}

    def at(self, now: float) -> Bus:
        self.now = now
        return self

    def send(self, peer: bytes, frames: list) -> list[tuple[bytes, object]]:
        return self.decode(self.core.handle(peer, frames, self.now))

    def request(self, client: bytes, service: bytes = b"echo", *body: bytes,
                d: p.Dialect = V02) -> list:
        self.roles[client] = ("client", d)
        return self.send(client, p.client_request(d, service, list(body)))

    def ready(self, worker: bytes, service: bytes = b"echo", d: p.Dialect = V02,
              metadata: bytes = b"") -> list:
        self.roles[worker] = ("worker", d)
        return self.send(worker, p.worker_ready(d, service, metadata))

    def reply(self, worker: bytes, address: bytes, *body: bytes, final: bool = True) -> list:
        return self.send(worker, p.worker_reply(self.dialect(worker), address, list(body), final))

    def heartbeat(self, worker: bytes) -> list:
        return self.send(worker, p.worker_heartbeat(self.dialect(worker)))

    def disconnect(self, worker: bytes) -> list:
        return self.send(worker, p.worker_disconnect(self.dialect(worker)))

    def gone(self, peer: bytes) -> list:
        """The peer's connection closed."""
        return self.decode(self.core.peer_disconnected(peer, self.now))

    def tick(self, now: float) -> list:
        self.now = now
        return self.decode(self.core.tick(now))

    def dialect(self, peer: bytes) -> p.Dialect:
        return self.roles[peer][1]

    def decode(self, out: list) -> list[tuple[bytes, object]]:
        decoded = []
        for peer, frames in out:
            role, d = self.roles[peer]
            parse = p.parse_client_reply if role == "client" else p.parse_worker_message
            decoded.append((peer, parse(d, frames)))
        return decoded

    def kinds(self) -> list[str]:
        return [event.kind for event in self.core.events]


def only(out: list) -> tuple[bytes, object]:
    assert len(out) == 1, out
    return out[0]


def request_to(out: list, worker: bytes) -> p.WorkerRequest:
    peer, message = only(out)
    assert peer == worker and isinstance(message, p.WorkerRequest)
    return message


def broker_error(reply: p.ClientReply, service: bytes = b"echo") -> BrokerError:
    """The broker error a reply carries, by the convention of protocol/mdp.md 8.1: the
    service frame (none for majortomo) is the one asked for, the body starts with the
    marker."""
    assert reply.final and reply.service in (service, None)
    assert bytes(reply.body[0]) == BROKER_ERROR_MARKER
    return decode_broker_error(reply.body, service.decode())


def status(bus: Bus) -> dict:
    return bus.core.status(bus.now)


# ------------------------------------------------------------ routing


def test_workers_are_used_least_recently_used_first():
    bus = Bus()
    for worker in (b"w1", b"w2", b"w3"):
        assert bus.ready(worker) == []
    assert request_to(bus.request(b"a", b"echo", b"A"), b"w1").body == [b"A"]
    assert request_to(bus.request(b"b", b"echo", b"B"), b"w2").body == [b"B"]
    bus.reply(b"w1", ID1, b"A")
    assert request_to(bus.request(b"c", b"echo", b"C"), b"w3").body == [b"C"]
    assert request_to(bus.request(b"d", b"echo", b"D"), b"w1").body == [b"D"]
    bus.reply(b"w2", ID2, b"B")
    bus.reply(b"w3", ID3, b"C")
    assert request_to(bus.request(b"e", b"echo", b"E"), b"w2").body == [b"E"]


def test_requests_wait_in_fifo_order_per_service():
    bus = Bus()
    for n in range(3):
        assert bus.request(b"c%d" % n, b"echo", b"%d" % n) == []
    assert bus.request(b"o", b"other", b"o") == []
    assert status(bus)["services"]["echo"]["queued"] == 3
    assert request_to(bus.ready(b"w"), b"w") == p.WorkerRequest(ID1, [b"0"])
    out = bus.reply(b"w", ID1, b"r")
    assert out[0][0] == b"c0" and out[1] == (b"w", p.WorkerRequest(ID2, [b"1"]))
    out = bus.reply(b"w", ID2, b"r")
    assert out[0][0] == b"c1" and out[1] == (b"w", p.WorkerRequest(ID3, [b"2"]))
    assert only(bus.reply(b"w", ID3, b"r"))[0] == b"c2"
    assert status(bus)["services"]["other"]["queued"] == 1


def conn(client: bytes, n: int) -> bytes:
    """Connection ``n`` of ``client``, as the client libraries name it (mdp.md 6.1), with
    the broker loop's socket tag in front."""
    return b"\x01share:" + client + b"/%d" % n


def served_order(bus: Bus, worker: bytes, count: int) -> list[bytes]:
    """The bodies ``worker`` is given, answering each at once, ``count`` in all."""
    order = []
    message = None
    for _ in range(count):
        if message is None:
            message = request_to(bus.ready(worker), worker)
        order.append(bytes(message.body[0]))
        out = bus.reply(worker, message.address, b"done")
        given = [m for peer, m in out if peer == worker]
        message = given[0] if given else None
    return order


def test_clients_are_served_in_turn_however_many_connections_each_holds():
    bus = Bus()
    for n in range(6):  # a map: six requests in flight, one connection each
        bus.request(conn(b"map", n), b"echo", b"M%d" % n)
    bus.request(conn(b"relax", 0), b"echo", b"R0")
    bus.request(b"plain", b"echo", b"P0")  # an RFC 7/18 client: a client of its own
    assert served_order(bus, b"w", 8) == [b"M0", b"R0", b"P0", b"M1", b"M2", b"M3", b"M4",
                                          b"M5"]


def test_a_single_call_waits_for_one_turn_of_a_map_not_for_the_whole_map():
    bus = Bus()
    bus.ready(b"w")
    for n in range(32):
        bus.request(conn(b"map", n), b"echo", b"M%d" % n)  # M0 goes to w at once
    bus.request(conn(b"relax", 0), b"echo", b"R0")
    out = bus.reply(b"w", ID1, b"done")  # M0 done: the map had its turn, R0 has not
    assert request_to(out[1:], b"w").body == [b"R0"]
    out = bus.reply(b"w", ID1[:7] + b"\x21", b"done")  # (R0 is request 33)
    assert request_to(out[1:], b"w").body == [b"M1"]
    assert status(bus)["services"]["echo"]["queued"] == 30


def test_two_maps_get_turns_alike_whatever_they_keep_in_flight():
    bus = Bus()
    for n in range(8):
        bus.request(conn(b"big", n), b"echo", b"B%d" % n)
    for n in range(2):
        bus.request(conn(b"small", n), b"echo", b"S%d" % n)
    assert served_order(bus, b"w", 6) == [b"B0", b"S0", b"B1", b"S1", b"B2", b"B3"]


def test_a_closed_connection_drops_its_own_requests_not_its_clients_others():
    bus = Bus()
    bus.ready(b"w")
    bus.request(conn(b"a", 0), b"echo", b"A0")  # to w
    bus.request(conn(b"a", 1), b"echo", b"A1")
    bus.request(conn(b"a", 2), b"echo", b"A2")
    assert bus.gone(conn(b"a", 1)) == []
    assert [r.body for r in bus.core.services[b"echo"].queue] == [[b"A2"]]
    assert status(bus)["services"]["echo"]["abandoned"] == 1
    out = bus.reply(b"w", ID1, b"done")
    assert request_to(out[1:], b"w").body == [b"A2"]


def test_a_script_that_is_gone_leaves_nothing_queued_for_others_to_wait_behind():
    bus = Bus()
    bus.ready(b"w")
    for n in range(5):
        bus.request(conn(b"gone", n), b"echo", b"G%d" % n)
    bus.request(conn(b"next", 0), b"echo", b"N0")
    for n in range(5):
        bus.gone(conn(b"gone", n))  # killed: every connection closes
    assert [r.body for r in bus.core.services[b"echo"].queue] == [[b"N0"]]
    assert status(bus)["services"]["echo"]["abandoned"] == 4
    assert bus.reply(b"w", ID1, b"late") == [(b"w", p.WorkerRequest(ID1[:7] + b"\x06",
                                                                     [b"N0"]))]


def test_status_shows_each_client_with_work_and_where_it_runs():
    bus = Bus(now=100.0, client_linger=30.0, heartbeat_interval=10.0)
    bus.ready(b"w")
    client = b"node-7:4711:ab12"
    bus.request(conn(client, 0), b"echo", b"1")  # held by w
    bus.at(101.0).request(conn(client, 1), b"echo", b"2")
    bus.at(102.0).request(b"plain", b"echo", b"3")
    bus.at(104.0)
    shown = status(bus)["services"]["echo"]
    assert shown["clients_active"] == 2
    assert shown["clients"] == [
        {"client": "node-7:4711:ab12", "host": "node-7", "pid": 4711, "queued": 1,
         "in_flight": 1, "served": 0, "failed": 0, "since": 4.0, "waiting": 3.0},
        {"client": "plain", "host": None, "pid": None, "queued": 1, "in_flight": 0,
         "served": 0, "failed": 0, "since": 2.0, "waiting": 2.0}]
    bus.reply(b"w", ID1, b"r")
    request_to(bus.reply(b"w", ID3, b"r")[1:], b"w")  # plain had had no turn: it went first
    bus.reply(b"w", ID2, b"r")
    assert status(bus)["services"]["echo"]["clients"] == []  # nothing queued or held
    shares = bus.core.services[b"echo"].queue.clients
    assert shares[b"share:" + client].served == 2
    bus.tick(130.0)  # idle for 26 s: still remembered
    assert len(shares) == 2
    bus.tick(140.0)  # idle for longer than client_linger: forgotten
    assert shares == {}


def test_a_request_waits_for_a_worker_and_goes_to_the_first_that_registers():
    bus = Bus()
    assert bus.request(b"c", b"echo", b"hi") == []
    assert bus.kinds() == ["demand"]
    assert bus.core.events[0] == Event("demand", "echo", None, queued=1, workers=0, busy=0)
    bus.at(4.0)
    assert bus.ready(b"other", b"other") == []
    message = request_to(bus.ready(b"w"), b"w")
    assert message == p.WorkerRequest(ID1, [b"hi"])
    peer, reply = only(bus.reply(b"w", ID1, b"ho"))
    assert (peer, reply) == (b"c", p.ClientReply(b"echo", [b"ho"], True))


def test_request_ids_are_eight_bytes_and_fresh_per_request():
    bus = Bus()
    bus.ready(b"w")
    seen = set()
    for _ in range(5):
        message = request_to(bus.request(b"c", b"echo", b"x"), b"w")
        assert len(message.address) == 8
        seen.add(message.address)
        bus.reply(b"w", message.address, b"y")
    assert len(seen) == 5


@pytest.mark.parametrize("client_d", DIALECTS, ids=lambda d: d.value)
@pytest.mark.parametrize("worker_d", DIALECTS, ids=lambda d: d.value)
def test_every_client_dialect_reaches_every_worker_dialect(client_d, worker_d):
    bus = Bus()
    bus.ready(b"w", b"echo", worker_d)
    message = request_to(bus.request(b"c", b"echo", b"x", b"", b"\xff", d=client_d), b"w")
    assert message.body == [b"x", b"", b"\xff"]
    peer, reply = only(bus.reply(b"w", message.address, b"y", b"z"))
    service = None if client_d is MT else b"echo"
    assert (peer, reply) == (b"c", p.ClientReply(service, [b"y", b"z"], True))


@pytest.mark.parametrize("worker_d", [V02, MT], ids=lambda d: d.value)
@pytest.mark.parametrize("client_d", [V02, MT], ids=lambda d: d.value)
def test_partials_are_relayed_as_they_come_to_streaming_clients(client_d, worker_d):
    bus = Bus()
    bus.ready(b"w", b"echo", worker_d)
    bus.request(b"c", b"echo", b"x", d=client_d)
    service = None if client_d is MT else b"echo"
    for part in (b"1", b"2"):
        assert bus.reply(b"w", ID1, part, final=False) == \
            [(b"c", p.ClientReply(service, [part], False))]
    assert bus.reply(b"w", ID1, b"3") == [(b"c", p.ClientReply(service, [b"3"], True))]
    assert status(bus)["workers"][0]["state"] == "idle"


@pytest.mark.parametrize("worker_d", [V02, MT], ids=lambda d: d.value)
def test_partials_are_buffered_and_joined_for_v01_clients(worker_d):
    bus = Bus()
    bus.ready(b"w", b"echo", worker_d)
    bus.request(b"c", b"echo", b"x", d=V01)
    assert bus.reply(b"w", ID1, b"a", b"b", final=False) == []
    assert bus.reply(b"w", ID1, final=False) == []
    assert bus.reply(b"w", ID1, b"c", final=False) == []
    reply = only(bus.reply(b"w", ID1, b"d", b"e"))[1]
    assert reply == p.ClientReply(b"echo", [b"a", b"b", b"c", b"d", b"e"], True)
    bus.request(b"c", b"echo", b"again", d=V01)
    assert only(bus.reply(b"w", ID2, b"f"))[1].body == [b"f"]  # the buffer was emptied


@pytest.mark.parametrize("forged", [False, True], ids=["worker-error", "forged-broker-error"])
@pytest.mark.parametrize("in_part", [False, True], ids=["in-the-final", "in-a-part"])
def test_an_error_is_the_whole_reply_of_a_v01_client(forged, in_part):
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"c", b"echo", b"x", d=V01)
    assert bus.reply(b"w", ID1, b"part", final=False) == []
    error = [BROKER_ERROR_MARKER, b"500", b"x", b"y"] if forged else \
        worker_error_body("ValueError", "bad input")
    if in_part:
        assert bus.reply(b"w", ID1, *error, final=False) == []
        reply = only(bus.reply(b"w", ID1, b"last part"))[1]
    else:
        reply = only(bus.reply(b"w", ID1, *error))[1]
    assert bytes(reply.body[0]) == WORKER_ERROR_MARKER and b"part" not in reply.body


def test_a_worker_holds_one_request_at_a_time():
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"a", b"echo", b"1")
    assert bus.request(b"b", b"echo", b"2") == []
    assert bus.reply(b"w", ID1, b"1", final=False) == [(b"a", p.ClientReply(b"echo", [b"1"],
                                                                            False))]
    out = bus.reply(b"w", ID1, b"done")
    assert [peer for peer, _ in out] == [b"a", b"w"]


# ------------------------------------------------------------ expiry and queue limit


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_a_request_nobody_takes_expires_with_504(d):
    bus = Bus(request_expiry=5.0, heartbeat_interval=100.0)
    bus.request(b"c", b"echo", b"x", d=d)
    assert bus.core.next_deadline() == 5.0
    assert bus.tick(4.99) == []
    peer, reply = only(bus.tick(5.0))
    error = broker_error(reply)
    assert peer == b"c" and type(error) is RequestExpired
    assert (error.code, error.reason, error.service) == (504, "expired", "echo")
    assert "no worker offers it" in error.message
    assert status(bus)["services"]["echo"] == {
        "workers": 0, "idle": 0, "busy": 0, "queued": 0, "served": 0, "failed": 0,
        "expired": 1, "rejected": 0, "abandoned": 0, "lost": 0, "not_served": 0,
        "units": {"queued": 0, "in_flight": 0, "served": 0, "failed": 0},
        "clients_active": 0, "clients": []}
    assert bus.ready(b"w") == []  # nothing left to hand out
    assert bus.tick(50.0) == []


def test_expiry_is_per_request_and_the_reason_names_busy_workers():
    bus = Bus(request_expiry=5.0, heartbeat_interval=100.0, heartbeat_liveness=10)
    bus.ready(b"w")
    bus.request(b"a")  # taken by w, never expires
    bus.at(1.0).request(b"b")
    bus.at(3.0).request(b"c")
    assert bus.tick(5.5) == []
    peer, reply = only(bus.tick(6.0))
    assert peer == b"b" and "all 1 workers stayed busy" in broker_error(reply).message
    assert bus.core.next_deadline() == 8.0
    assert only(bus.tick(8.0))[0] == b"c"
    assert bus.tick(99.0) == []


def test_a_requeued_request_waits_a_full_expiry_again():
    bus = Bus(request_expiry=5.0, heartbeat_interval=100.0)
    bus.ready(b"w")
    bus.request(b"c")
    bus.at(4.0).disconnect(b"w")
    assert bus.tick(5.0) == []
    assert bus.tick(8.99) == []
    peer, reply = only(bus.tick(9.0))
    assert peer == b"c" and type(broker_error(reply)) is RequestExpired


def test_requests_never_expire_without_a_request_expiry():
    bus = Bus(request_expiry=None, heartbeat_interval=1000.0)
    bus.request(b"c")
    assert bus.tick(999.0) == []
    assert request_to(bus.ready(b"w"), b"w").address == ID1


def test_fail_queued_answers_every_waiting_request_with_the_error():
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"held")
    bus.request(b"a", d=V01)
    bus.request(b"b", d=MT)
    bus.request(b"o", b"other")
    error = ServiceStartFailed("the worker exited with status 1", "echo")
    out = bus.decode(bus.core.fail_queued(b"echo", error))
    assert [peer for peer, _ in out] == [b"a", b"b"]
    for _, reply in out:
        decoded = broker_error(reply)
        assert type(decoded) is ServiceStartFailed and decoded.code == 502
        assert decoded.message == "the worker exited with status 1"
    assert status(bus)["services"]["echo"]["failed"] == 2
    assert status(bus)["services"]["other"]["queued"] == 1
    assert bus.core.fail_queued(b"nothing-here", error) == []
    assert only(bus.reply(b"w", ID1, b"ok"))[0] == b"held"


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_a_full_queue_refuses_with_503(d):
    bus = Bus(queue_limit=2)
    bus.ready(b"w")
    bus.request(b"held")  # with the worker: does not count
    assert bus.request(b"a") == []
    assert bus.request(b"b") == []
    peer, reply = only(bus.request(b"c", b"echo", b"x", d=d))
    error = broker_error(reply)
    assert peer == b"c" and type(error) is QueueFull
    assert (error.code, error.service) == (503, "echo")
    assert status(bus)["services"]["echo"]["rejected"] == 1
    assert status(bus)["services"]["echo"]["queued"] == 2
    assert bus.request(b"o", b"other") == []  # the limit is per service
    bus.reply(b"w", ID1, b"r")  # a takes the free place...
    assert bus.request(b"d") == []  # ...so d is accepted
    assert status(bus)["services"]["echo"]["queued"] == 2


def test_a_queue_limit_of_zero_refuses_even_what_an_idle_worker_could_take():
    bus = Bus(queue_limit=0)
    bus.ready(b"w")
    assert type(broker_error(only(bus.request(b"c"))[1])) is QueueFull
    assert status(bus)["workers"][0]["state"] == "idle"


def test_no_queue_limit():
    bus = Bus(queue_limit=None)
    for n in range(50):
        assert bus.request(b"c%d" % n) == []
    assert status(bus)["services"]["echo"]["queued"] == 50


# ------------------------------------------------------------ heartbeats and dead workers


def test_heartbeats_go_to_every_worker_each_interval_in_its_dialect():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=100)
    bus.ready(b"a", b"echo", V02)
    bus.ready(b"b", b"echo", V01)
    bus.ready(b"c", b"other", MT)
    bus.request(b"client")  # a is busy: it gets heartbeats too
    assert bus.core.next_deadline() == 1.0
    assert bus.tick(0.5) == []
    out = bus.tick(1.0)
    assert sorted(out) == [(b"a", p.Heartbeat(V02)), (b"b", p.Heartbeat(V01)),
                           (b"c", p.Heartbeat(MT))]
    assert bus.tick(1.9) == []
    assert len(bus.tick(2.0)) == 3


def test_a_late_tick_sends_one_round_of_heartbeats_not_several():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=100)
    bus.ready(b"a")
    assert bus.tick(5.5) == [(b"a", p.Heartbeat(V02))]
    assert bus.core.next_deadline() > 5.5
    assert bus.tick(5.5) == []


def test_a_silent_worker_is_removed_after_interval_times_liveness():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=3)
    bus.ready(b"w")
    bus.at(0.5).ready(b"late")
    assert len(bus.tick(1.0)) == 2
    assert len(bus.tick(2.0)) == 2
    out = bus.tick(3.0)
    assert sorted(out) == [(b"late", p.Heartbeat(V02)), (b"w", p.Disconnect(V02))]
    assert list(bus.core.workers) == [b"late"]
    assert bus.tick(4.0) == [(b"late", p.Disconnect(V02))]
    assert bus.core.workers == {} and b"echo" not in bus.core.services
    lost = [e for e in bus.core.events if e.kind == "worker-lost"]
    assert [(e.worker, e.detail) for e in lost] == [(peer_name(b"w"), "heartbeats stopped"),
                                                    (peer_name(b"late"), "heartbeats stopped")]


def test_any_message_from_a_worker_keeps_it_alive():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=2)
    bus.ready(b"w")
    bus.at(1.5).heartbeat(b"w")
    bus.tick(2.0)
    assert b"w" in bus.core.workers
    bus.at(2.5).request(b"c")
    bus.at(3.4).reply(b"w", ID1, b"part", final=False)
    bus.tick(3.0)
    bus.tick(4.0)
    bus.at(5.0).reply(b"w", ID1, b"done")
    assert bus.tick(5.0) == [(b"w", p.Heartbeat(V02))]
    assert bus.tick(6.0) == [(b"w", p.Heartbeat(V02))]
    assert bus.tick(7.0) == [(b"w", p.Disconnect(V02))]


def test_a_dead_workers_request_goes_to_the_front_and_to_another_worker():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=3, busy_timeout=3.0, max_attempts=3)
    bus.ready(b"w1")
    request_to(bus.request(b"a", b"echo", b"A"), b"w1")
    bus.request(b"b", b"echo", b"B")
    for now in (1.0, 2.0):
        bus.tick(now)
    assert bus.tick(3.0) == [(b"w1", p.Disconnect(V02))]
    queue = list(bus.core.services[b"echo"].queue)
    assert [r.body for r in queue] == [[b"A"], [b"B"]]
    assert queue[0].attempts == 1
    assert bus.kinds()[-2:] == ["worker-lost", "demand"]
    message = request_to(bus.at(3.5).ready(b"w2"), b"w2")
    assert message == p.WorkerRequest(ID1, [b"A"])
    out = bus.reply(b"w2", ID1, b"ok")
    assert out == [(b"a", p.ClientReply(b"echo", [b"ok"])), (b"w2", p.WorkerRequest(ID2, [b"B"]))]


@pytest.mark.parametrize("how", ["silence", "disconnect", "ready-twice", "connection-closed"])
def test_after_max_attempts_deaths_the_client_gets_500(how):
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=1, busy_timeout=1.0, max_attempts=2)
    bus.request(b"c", b"echo", b"x", d=MT)
    for n, worker in enumerate((b"w1", b"w2")):
        bus.at(n * 10.0)
        request_to(bus.ready(worker), worker)
        if how == "silence":
            out = bus.tick(n * 10.0 + 1.0)
        elif how == "disconnect":
            out = bus.disconnect(worker)
        elif how == "connection-closed":
            out = bus.gone(worker)
        else:
            out = bus.ready(worker)
    peer, reply = [(peer, m) for peer, m in out if peer == b"c"][0]
    error = broker_error(reply)
    assert type(error) is AttemptsExhausted and (error.code, error.service) == (500, "echo")
    assert "2 workers" in error.message
    assert status(bus)["services"]["echo"]["failed"] == 1
    assert bus.core.events[-1] == Event("dropped", "echo", detail="attempts-exhausted")
    assert b"echo" not in bus.core.services  # no worker, no queue: forgotten
    assert bus.at(30.0).ready(b"w3") == []


def test_requests_queued_behind_one_given_up_still_ask_for_a_worker():
    """A request that kills its workers is given up; those behind it must not wait for a
    worker that nobody is told to start (an autostarting broker starts one on demand)."""
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=1, busy_timeout=1.0, max_attempts=1)
    bus.ready(b"w1")
    request_to(bus.request(b"a", b"echo", b"A"), b"w1")
    bus.request(b"b", b"echo", b"B")
    bus.disconnect(b"w1")
    assert bus.kinds()[-3:] == ["worker-lost", "dropped", "demand"]
    assert request_to(bus.at(2.0).ready(b"w2"), b"w2") == p.WorkerRequest(ID2, [b"B"])


def test_a_late_reply_from_a_worker_given_up_for_dead_is_not_sent_twice():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=1, busy_timeout=1.0)
    bus.ready(b"w1")
    bus.request(b"c")
    bus.at(0.5).ready(b"w2")
    out = bus.tick(1.0)
    assert (b"w1", p.Disconnect(V02)) in out
    assert (b"w2", p.WorkerRequest(ID1, [])) in out
    assert bus.at(1.1).reply(b"w1", ID1, b"late") == [(b"w1", p.Disconnect(V02))]
    bus.at(1.2).ready(b"w1")  # back, holding nothing: its old reply is dropped silently
    assert bus.reply(b"w1", ID1, b"late again") == []
    assert b"w1" in bus.core.workers
    assert bus.reply(b"w2", ID1, b"x") == [(b"c", p.ClientReply(b"echo", [b"x"], True))]
    assert bus.reply(b"w2", ID1, b"x") == []
    assert status(bus)["counters"]["replies"] == 1


def test_a_reply_for_another_request_is_dropped_and_the_worker_stays():
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"c")
    assert bus.reply(b"w", b"\xff" * 8, b"wrong") == []
    assert bus.reply(b"w", b"", b"wrong", final=False) == []
    assert status(bus)["workers"][0]["state"] == "busy"
    assert only(bus.reply(b"w", ID1, b"right"))[0] == b"c"


def test_partials_of_an_abandoned_attempt_are_not_sent_to_a_v01_client():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=1)
    bus.ready(b"w1")
    bus.request(b"c", d=V01)
    assert bus.reply(b"w1", ID1, b"stale part", final=False) == []
    bus.disconnect(b"w1")
    bus.ready(b"w2")
    assert bus.reply(b"w2", ID1, b"fresh") == [(b"c", p.ClientReply(b"echo", [b"fresh"]))]


def test_a_worker_that_says_disconnect_while_idle_is_just_removed():
    bus = Bus()
    bus.ready(b"w")
    assert bus.disconnect(b"w") == []
    assert bus.core.workers == {}
    assert bus.kinds() == ["worker-ready", "worker-lost"]
    assert bus.core.events[-1].detail == "disconnected"
    assert bus.disconnect(b"w") == []  # unknown now: ignored


# ------------------------------------------------------------ busy workers, closed connections


def test_a_busy_worker_that_sends_nothing_is_kept_until_the_busy_timeout():
    """RFC 7's reference worker is single-threaded: silent while its handler runs."""
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=2, busy_timeout=30.0)
    bus.ready(b"w", d=V01)
    bus.ready(b"idle", d=V01)
    bus.request(b"c", d=V01)  # to w
    for now in range(1, 30):
        out = bus.tick(float(now))
        assert (b"w", p.Heartbeat(V01)) in out, now
    assert b"idle" not in bus.core.workers  # silent and idle: gone after 2 s
    assert bus.at(29.5).reply(b"w", ID1, b"done") == [(b"c", p.ClientReply(b"echo", [b"done"]))]
    assert status(bus)["workers"][0]["state"] == "idle"


def test_a_busy_worker_silent_past_the_busy_timeout_is_given_up():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=2, busy_timeout=5.0)
    bus.ready(b"w")
    bus.request(b"c")
    assert (b"w", p.Heartbeat(V02)) in bus.tick(4.0)
    assert bus.tick(5.0) == [(b"w", p.Disconnect(V02))]
    assert bus.core.events[-2].detail == "silent while busy for longer than the busy timeout"
    assert [r.id for r in bus.core.services[b"echo"].queue] == [ID1]


def test_without_a_busy_timeout_a_busy_worker_may_stay_silent_for_ever():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=2, busy_timeout=None)
    bus.ready(b"w")
    bus.request(b"c")
    assert bus.tick(1e6) == [(b"w", p.Heartbeat(V02))]


def test_an_idle_worker_whose_connection_closed_is_removed_at_once():
    bus = Bus()
    bus.ready(b"w1")
    bus.ready(b"w2")
    assert bus.gone(b"w1") == []
    assert list(bus.core.workers) == [b"w2"]
    assert bus.core.events[-1] == Event("worker-lost", "echo", peer_name(b"w1"), workers=1,
                                        detail="connection closed", processes=1)
    assert request_to(bus.request(b"c"), b"w2").address == ID1


def test_a_busy_worker_whose_connection_closed_hands_its_request_on_at_once():
    bus = Bus()
    bus.ready(b"w1")
    bus.request(b"c", b"echo", b"x")
    bus.ready(b"w2")
    assert bus.gone(b"w1") == [(b"w2", p.WorkerRequest(ID1, [b"x"]))]
    assert bus.reply(b"w2", ID1, b"y") == [(b"c", p.ClientReply(b"echo", [b"y"]))]


def test_a_client_that_went_away_leaves_nothing_to_run():
    bus = Bus(max_attempts=5)
    bus.ready(b"w1")
    bus.request(b"c", b"echo", b"held")  # ID1, with w1
    bus.request(b"c", b"echo", b"queued")  # ID2: a DEALER may have several in flight
    bus.request(b"c", b"other", b"queued too")  # ID3
    bus.request(b"d", b"echo", b"stays")  # ID4
    assert bus.gone(b"c") == []
    assert [r.id for r in bus.core.services[b"echo"].queue] == [ID4]
    assert b"other" not in bus.core.services  # nothing left there: forgotten
    assert status(bus)["services"]["other"]["abandoned"] == 1
    # The held one runs to its end, but its reply goes nowhere.
    assert bus.reply(b"w1", ID1, b"late", final=False) == []
    assert bus.reply(b"w1", ID1, b"late") == [(b"w1", p.WorkerRequest(ID4, [b"stays"]))]
    bus.ready(b"w2")
    assert bus.gone(b"w1") == [(b"w2", p.WorkerRequest(ID4, [b"stays"]))]
    assert status(bus)["services"]["echo"]["abandoned"] == 1
    assert status(bus)["services"]["echo"]["served"] == 1


def test_a_held_request_whose_client_went_away_is_not_requeued_when_its_worker_dies():
    bus = Bus()
    bus.ready(b"w1")
    bus.request(b"c")
    bus.gone(b"c")
    bus.ready(b"w2")
    assert bus.gone(b"w1") == []
    assert status(bus)["services"]["echo"]["abandoned"] == 1
    assert status(bus)["workers"][0]["state"] == "idle"


def test_a_peer_the_broker_never_heard_of_may_disconnect():
    bus = Bus()
    assert bus.gone(b"stranger") == []
    assert bus.core.services == {} and bus.core.events == []


# ------------------------------------------------------------ worker state


def test_worker_state_changes_only_as_its_transitions_allow():
    bus = Bus()
    bus.ready(b"w")
    worker = bus.core.workers[b"w"]
    assert worker.state is WorkerState.IDLE
    with pytest.raises(StateError):
        worker.release()
    bus.request(b"c")
    assert worker.state is WorkerState.BUSY and worker.request.id == ID1
    with pytest.raises(StateError):
        worker.assign(worker.request)
    assert worker.release().id == ID1 and worker.state is WorkerState.IDLE


def test_idle_workers_leave_the_lru_order_from_any_place():
    bus = Bus()
    for worker in (b"w1", b"w2", b"w3", b"w4"):
        bus.ready(worker)
    bus.disconnect(b"w2")
    bus.gone(b"w4")
    assert list(bus.core.services[b"echo"].idle) == [b"w1", b"w3"]
    assert request_to(bus.request(b"a"), b"w1")
    assert request_to(bus.request(b"b"), b"w3")


# ------------------------------------------------------------ protocol violations


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_a_worker_may_not_register_an_mmi_service(d):
    bus = Bus()
    assert bus.ready(b"w", b"mmi.service", d) == [(b"w", p.Disconnect(d))]
    assert bus.core.workers == {} and bus.core.services == {}
    assert bus.request(b"c", b"mmi.service", b"mmi.service") == \
        [(b"c", p.ClientReply(b"mmi.service", [b"404"]))]


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_ready_twice_disconnects_and_requeues(d):
    bus = Bus()
    bus.ready(b"w1", b"echo", d)
    bus.ready(b"w2", b"echo", V02)
    bus.request(b"c", b"echo", b"x")
    out = bus.ready(b"w1", b"echo", d)
    assert out == [(b"w1", p.Disconnect(d)), (b"w2", p.WorkerRequest(ID1, [b"x"]))]
    assert list(bus.core.workers) == [b"w2"]
    assert bus.ready(b"w1", b"echo", d) == []  # a fresh READY registers it again
    assert b"w1" in bus.core.workers


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_an_unknown_worker_is_told_to_disconnect(d):
    bus = Bus()
    bus.roles[b"w"] = ("worker", d)
    assert bus.heartbeat(b"w") == [(b"w", p.Disconnect(d))]
    assert bus.reply(b"w", ID1, b"x") == [(b"w", p.Disconnect(d))]
    if d is not V01:
        assert bus.reply(b"w", ID1, b"x", final=False) == [(b"w", p.Disconnect(d))]
    assert bus.disconnect(b"w") == []
    assert bus.core.workers == {}


def test_malformed_messages_are_dropped_counted_and_logged_once(caplog):
    bus = Bus()
    bus.ready(b"w")
    with caplog.at_level(logging.WARNING, logger="mdp.broker"):
        for _ in range(3):
            assert bus.send(b"w", [b"MDPW02", b"\x09"]) == []
        assert bus.send(b"x", []) == []
        assert bus.send(b"x", [b"MDPC02", b"\x01", b""]) == []
    assert status(bus)["counters"]["dropped_messages"] == 5
    assert len(caplog.records) == 3
    assert b"w" in bus.core.workers


def test_a_service_name_over_255_bytes_is_refused_with_400():
    bus = Bus()
    long = b"x" * 256
    for d in DIALECTS:
        peer, reply = only(bus.request(b"c", long, b"body", d=d))
        assert reply.service == (None if d is MT else long)  # RFC 7 clients check it
        error = broker_error(reply, long)
        assert type(error) is ServiceNameTooLong and (error.code, error.reason) == \
            (400, "name-too-long")
        assert "256 bytes" in error.message and len(error.message) < 200
    assert bus.core.services == {} and bus.core.retired == {}
    assert bus.request(b"c", b"x" * 255) == []  # 255 bytes is fine: it waits


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_a_worker_may_not_register_a_name_over_255_bytes(d, caplog):
    bus = Bus()
    with caplog.at_level(logging.WARNING, logger="mdp.broker"):
        assert bus.ready(b"w", b"y" * 256, d) == [(b"w", p.Disconnect(d))]
    assert bus.core.workers == {} and bus.core.services == {}
    assert "256 bytes long" in caplog.text


def test_a_worker_reply_posing_as_a_broker_error_reaches_the_client_as_a_worker_error():
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"c", b"echo", b"x", d=MT)
    forged = broker_error_body(QueueFull("not really", "echo"))
    peer, reply = only(bus.reply(b"w", ID1, *forged))
    assert reply.service is None and is_worker_error(reply.body)
    error = decode_worker_error(reply.body, "echo")
    assert error.error_type == "ProtocolError" and "reserved" in error.message
    assert error.worker == peer_name(b"w")
    assert status(bus)["services"]["echo"]["failed"] == 1
    bus.request(b"c", b"echo", b"x")
    assert bus.reply(b"w", ID2, *forged, final=False)[0][1].body[0] != forged[0]


# ------------------------------------------------------------ worker errors and events


def test_worker_errors_are_relayed_and_count_as_failed():
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"c")
    body = worker_error_body("ValueError", "bad input")
    assert bus.reply(b"w", ID1, *body) == [(b"c", p.ClientReply(b"echo", body))]
    bus.request(b"c")
    bus.reply(b"w", ID2, b"fine")
    assert status(bus)["services"]["echo"]["failed"] == 1
    assert status(bus)["services"]["echo"]["served"] == 1
    worker = status(bus)["workers"][0]  # one meaning of each count, as the service's
    assert (worker["served"], worker["failed"]) == (1, 1)
    served = [e for e in bus.core.events if e.kind == "served"]
    assert [e.detail for e in served] == ["failed", "ok"]


def test_events_carry_counts():
    bus = Bus(heartbeat_interval=1.0, heartbeat_liveness=1, busy_timeout=1.0, max_attempts=1)
    bus.ready(b"w1")
    bus.request(b"a")
    bus.request(b"b")
    bus.reply(b"w1", ID1, b"r")
    bus.tick(1.0)
    w1 = peer_name(b"w1")
    assert bus.core.events == [
        Event("worker-ready", "echo", w1, queued=0, workers=1, busy=0, processes=1),
        Event("demand", "echo", None, queued=1, workers=1, busy=1, processes=1),
        Event("served", "echo", w1, queued=1, workers=1, busy=0, detail="ok", processes=1),
        Event("worker-lost", "echo", w1, queued=0, workers=0, busy=0,
              detail="silent while busy for longer than the busy timeout"),
        Event("dropped", "echo", detail="attempts-exhausted"),
    ]


def test_a_request_goes_to_a_process_that_computes_nothing_before_a_busy_ones_spare():
    bus = Bus()
    bus.ready(b"a1", metadata=b'{"process": "host:1"}')
    bus.ready(b"a2", metadata=b'{"process": "host:1"}')
    bus.ready(b"b1", metadata=b'{"process": "host:2"}')
    bus.ready(b"b2", metadata=b'{"process": "host:2"}')
    assert request_to(bus.request(b"c1"), b"a1")
    assert request_to(bus.request(b"c2"), b"b1")  # not a2, the spare of a busy process
    assert request_to(bus.request(b"c3"), b"a2")  # all busy: least recently used
    bus.reply(b"b1", ID2, b"r")
    assert request_to(bus.request(b"c4"), b"b2")  # process 2 is free again, b2 is older
    assert [e.processes for e in bus.core.events if e.kind == "worker-ready"] == [1, 1, 2, 2]


def test_workers_that_name_no_process_are_processes_of_their_own():
    bus = Bus()
    bus.ready(b"w1")
    bus.ready(b"w2", metadata=b'{"process": 7}')  # not a string: not a name
    assert request_to(bus.request(b"c1"), b"w1")
    assert request_to(bus.request(b"c2"), b"w2")
    assert bus.core.events[-1].processes == 2


def test_a_process_is_forgotten_with_its_last_connection():
    bus = Bus()
    bus.ready(b"a1", metadata=b'{"process": "p"}')
    bus.ready(b"a2", metadata=b'{"process": "p"}')
    bus.request(b"c")
    assert request_to(bus.gone(b"a1"), b"a2")  # its request goes on to the other
    process = bus.core.services[b"echo"].processes["p"]
    assert (process.connections, process.busy) == (1, 1)
    assert bus.core.events[-1].processes == 1
    bus.gone(b"a2")
    assert not bus.core.services[b"echo"].processes


def test_a_request_an_idle_worker_takes_raises_no_demand():
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"c")
    assert bus.kinds() == ["worker-ready"]


def test_shutdown_answers_every_held_request_and_disconnects_every_worker():
    bus = Bus()
    bus.ready(b"a", b"echo", V02)
    bus.ready(b"b", b"echo", V01)
    bus.ready(b"c", b"other", MT)
    bus.request(b"held", d=V01)  # with a
    bus.request(b"also-held", d=MT)  # with b
    bus.request(b"queued")
    bus.request(b"elsewhere", b"nobody")
    out = bus.decode(bus.core.shutdown())
    workers = sorted((peer, m) for peer, m in out if peer in (b"a", b"b", b"c"))
    assert workers == [(b"a", p.Disconnect(V02)), (b"b", p.Disconnect(V01)),
                       (b"c", p.Disconnect(MT))]
    answered = {peer: m for peer, m in out if peer not in (b"a", b"b", b"c")}
    assert sorted(answered) == [b"also-held", b"elsewhere", b"held", b"queued"]
    for peer, reply in answered.items():
        service = b"nobody" if peer == b"elsewhere" else b"echo"
        error = broker_error(reply, service)
        assert type(error) is BrokerStopping and (error.code, error.reason) == \
            (503, "broker-stopping")
    assert bus.core.workers == {} and bus.core.services == {}
    assert bus.core.shutdown() == []


# ------------------------------------------------------------ MMI


def mmi(bus: Bus, service: bytes, *body: bytes, d: p.Dialect = V02) -> bytes:
    peer, reply = only(bus.request(b"mmi-client", service, *body, d=d))
    assert reply.final and reply.service == (None if d is MT else service)
    assert len(reply.body) == 1
    return bytes(reply.body[0])


def test_requests_weigh_what_a_layer_above_says_and_failures_are_told_apart():
    bus = Bus(max_attempts=1)
    bus.core.weigh = lambda service, body: len(body)  # (a request's units: its frames)
    bus.ready(b"w")
    bus.request(b"a", b"echo", b"1", b"2", b"3")  # 3 units, to w
    bus.request(b"b", b"echo", b"1", b"2")  # 2 units, queued
    shown = status(bus)["services"]["echo"]
    assert shown["units"] == {"queued": 2, "in_flight": 3, "served": 0, "failed": 0}
    bus.reply(b"w", ID1, b"ok")  # served: 3 units; b's goes to w
    bus.gone(b"w")  # w died holding b's request, which has no attempt left: lost
    bus.request(b"c", b"other", b"1")
    bus.core.fail_queued(b"other", ServiceStartFailed("could not start", "other"))
    echo, other = (status(bus)["services"][name] for name in ("echo", "other"))
    assert echo["units"] == {"queued": 0, "in_flight": 0, "served": 3, "failed": 2}
    assert (echo["failed"], echo["lost"], echo["not_served"]) == (1, 1, 0)
    assert (other["failed"], other["lost"], other["not_served"]) == (1, 0, 1)


def test_what_a_served_reply_says_of_its_units_and_its_time_counts():
    bus = Bus()
    bus.core.enable_timings()
    bus.core.weigh = lambda service, body: len(body)

    def read_reply(service, body):  # (a reply's failed units, and a time where it names one)
        seconds = [float(frame[2:]) for frame in body if frame.startswith(b"s=")]
        return ReplyFacts(body.count(b"bad"), seconds[0] if seconds else None)

    bus.core.read_reply = read_reply
    bus.ready(b"w")
    bus.at(0.0).request(b"a", b"echo", b"1", b"2", b"3")
    bus.at(0.5).reply(b"w", ID1, b"ok", b"bad", b"s=0.125")  # one of 3 failed; 0.125 s
    bus.at(1.0).request(b"c", b"echo", b"1", b"2")
    bus.at(1.25).reply(b"w", (2).to_bytes(8, "big"), b"bad", b"bad", b"bad")  # no time said
    bus.at(2.0).request(b"d", b"echo", b"1")
    bus.at(2.75).reply(b"w", (3).to_bytes(8, "big"), b"!")
    echo = status(bus)["services"]["echo"]
    assert echo["units"] == {"queued": 0, "in_flight": 0, "served": 3, "failed": 3}
    assert (echo["served"], echo["failed"]) == (3, 0)  # requests: all three answered
    work = bus.core.services[b"echo"].timings.work  # the worker's time, else the broker's:
    assert work.total == pytest.approx(0.125 + 0.25 + 0.75)
    assert work.counts[BOUNDS.index(0.25)] == 2 and work.counts[BOUNDS.index(1.0)] == 1


def test_with_timings_each_service_tells_its_last_minute():
    bus = Bus(heartbeat_interval=10.0)
    bus.core.enable_timings()
    bus.ready(b"w")
    for n in range(6):
        bus.at(10.0 * n).request(b"c", b"echo", b"x")  # waits 0, taken at once
        bus.at(10.0 * n + 0.02).reply(b"w", (n + 1).to_bytes(8, "big"), b"y")
        bus.tick(10.0 * n + 0.03)
    recent = status(bus)["services"]["echo"]["recent"]
    assert recent["units_per_second"] == pytest.approx(6 / 50.03, rel=0.01)  # since it came
    assert 0.01 < recent["work_median"] <= 0.025 and recent["wait_p95"] <= 0.001
    assert "recent" not in Bus().core.status(0.0)["services"].get("echo", {})


def others_using(bus: Bus, asker: bytes, service: bytes = b"echo") -> dict:
    peer, reply = only(bus.request(asker, b"mmi.clients", service))
    return json.loads(bytes(reply.body[0]))


def test_mmi_clients_counts_the_other_clients_that_use_a_service_lately():
    bus = Bus(sharing_window=5.0, heartbeat_interval=100.0, client_linger=1000.0)
    bus.ready(b"w")
    asker = conn(b"me", 0)  # a connection of the client that asks
    bus.request(conn(b"me", 1), b"echo", b"mine")  # held by w: the asker's own
    assert others_using(bus, asker) == {"others": 0}
    bus.request(b"plain", b"echo", b"x")  # queued
    bus.request(conn(b"third", 1), b"other", b"y")  # another service: not counted
    assert others_using(bus, asker) == {"others": 1}
    bus.reply(b"w", ID1, b"r")
    bus.at(3.0).reply(b"w", ID2, b"r")  # plain is answered: nothing queued or held
    assert others_using(bus, asker) == {"others": 1}  # but it used it lately
    bus.at(8.5)
    assert others_using(bus, asker) == {"others": 0}
    assert others_using(bus, asker, b"nobody") == {"others": 0}
    assert mmi(bus, b"mmi.clients") == b"400"
    bus.request(b"plain", b"echo", b"again")  # back
    bus.reply(b"w", ID1[:7] + b"\x04", b"r")
    assert others_using(bus, asker) == {"others": 1}
    bus.gone(b"plain")  # its connection closed, nothing of it left: gone at once
    assert others_using(bus, asker) == {"others": 0}


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_mmi_service(d):
    bus = Bus()
    bus.request(b"c", b"waiting")  # a service known from a request, without a worker
    bus.ready(b"w")
    assert mmi(bus, b"mmi.service", b"echo", d=d) == b"200"
    assert mmi(bus, b"mmi.service", b"echo", b"ignored", d=d) == b"200"
    assert mmi(bus, b"mmi.service", b"waiting", d=d) == b"404"
    assert mmi(bus, b"mmi.service", b"nope", d=d) == b"404"
    assert mmi(bus, b"mmi.service", b"", d=d) == b"404"
    assert mmi(bus, b"mmi.service", d=d) == b"400"
    assert mmi(bus, b"mmi.nope", d=d) == b"501"
    assert mmi(bus, b"mmi.error", d=d) == b"501"
    bus.disconnect(b"w")
    assert mmi(bus, b"mmi.service", b"echo", d=d) == b"404"
    assert b"mmi.service" not in bus.core.services
    assert bus.core.counters["requests"] == 10


def test_mmi_services_lists_every_known_service_sorted():
    bus = Bus()
    assert json.loads(mmi(bus, b"mmi.services")) == []
    bus.ready(b"w", b"zeta")
    bus.request(b"c", b"alpha")
    assert json.loads(mmi(bus, b"mmi.services")) == ["alpha", "zeta"]


def test_mmi_status_and_workers():
    bus = Bus(now=10.0, heartbeat_interval=100.0)
    bus.ready(b"\x01\x02", b"echo")
    bus.at(12.0).ready(b"w2", b"echo", V01)
    bus.ready(b"w3", b"calc", MT)
    bus.request(b"a")
    bus.reply(b"\x01\x02", ID1, b"r")
    bus.request(b"b")  # to w2
    bus.request(b"c")  # to \x01\x02
    bus.request(b"d")  # queued
    bus.send(b"junk", [b"junk"])
    bus.at(15.0)
    doc = json.loads(mmi(bus, b"mmi.status"))
    assert doc["version"] == __version__
    assert doc["uptime"] == 5.0
    assert doc["counters"] == {"requests": 5, "replies": 1, "dropped_messages": 1}
    def client(name, queued, in_flight):
        return {"client": name, "host": None, "pid": None, "queued": queued,
                "in_flight": in_flight, "served": 0, "failed": 0, "since": 3.0,
                "waiting": 3.0 if queued else 0.0}

    assert doc["services"] == {
        "calc": {"workers": 1, "idle": 1, "busy": 0, "queued": 0, "served": 0,
                 "failed": 0, "expired": 0, "rejected": 0, "abandoned": 0, "lost": 0,
                 "not_served": 0,
                 "units": {"queued": 0, "in_flight": 0, "served": 0, "failed": 0},
                 "clients_active": 0, "clients": []},
        "echo": {"workers": 2, "idle": 0, "busy": 2, "queued": 1, "served": 1,
                 "failed": 0, "expired": 0, "rejected": 0, "abandoned": 0, "lost": 0,
                 "not_served": 0,
                 "units": {"queued": 1, "in_flight": 2, "served": 1, "failed": 0},
                 "clients_active": 3,
                 "clients": [client("d", 1, 0), client("b", 0, 1), client("c", 0, 1)]}}
    assert doc["workers"] == [
        {"id": peer_name(b"\x01\x02"), "service": "echo", "dialect": "MDP/0.2", "state": "busy",
         "served": 1, "failed": 0, "since": 5.0, "metadata": {}},
        {"id": peer_name(b"w2"), "service": "echo", "dialect": "MDP/0.1", "state": "busy",
         "served": 0, "failed": 0, "since": 3.0, "metadata": {}},
        {"id": peer_name(b"w3"), "service": "calc", "dialect": "majortomo", "state": "idle",
         "served": 0, "failed": 0, "since": 3.0, "metadata": {}}]
    assert json.loads(mmi(bus, b"mmi.workers")) == doc["workers"]
    assert bus.core.status(15.0) == doc | {"counters": doc["counters"] | {"requests": 6}}


@pytest.mark.parametrize("d", DIALECTS)
def test_a_readys_metadata_is_shown_with_its_worker(d):
    bus = Bus()
    bus.ready(b"w1", b"echo", d, b'{"host":"gpu-7","device":"GPU 1","slurm_job":"42"}')
    bus.ready(b"w2", b"echo", d)
    workers = status(bus)["workers"]
    assert workers[0]["metadata"] == {"host": "gpu-7", "device": "GPU 1", "slurm_job": "42"}
    assert workers[1]["metadata"] == {}
    assert request_to(bus.request(b"c"), b"w1").body == []  # registered like any worker


@pytest.mark.parametrize("frame, why", [
    (b"[1, 2]", "not a JSON object"), (b"{nope", "not JSON"), (b"\xff", "not JSON"),
    (b"[" * 5000, "5000 bytes long"), (b"[" * 2000 + b"]" * 2000, "not JSON")])
def test_a_metadata_frame_that_is_no_small_json_object_is_ignored(frame, why, caplog):
    bus = Bus()
    with caplog.at_level(logging.WARNING, logger="mdp.broker"):
        bus.ready(b"w1", b"echo", V02, frame)
    assert status(bus)["workers"][0]["metadata"] == {}
    assert request_to(bus.request(b"c"), b"w1")
    assert why in caplog.text


def test_custom_mmi_handlers_add_and_replace():
    bus = Bus()
    seen = []
    bus.core.add_mmi_handler(b"mmi.echo", lambda body: (seen.append(body), [b"got", *body])[1])
    bus.core.add_mmi_handler("mmi.service", lambda body: [b"mine"])
    peer, reply = only(bus.request(b"c", b"mmi.echo", b"1", b"2"))
    assert reply == p.ClientReply(b"mmi.echo", [b"got", b"1", b"2"])
    assert seen == [[b"1", b"2"]]
    assert mmi(bus, b"mmi.service", b"echo") == b"mine"
    assert mmi(bus, b"mmi.other") == b"501"
    with pytest.raises(ValueError, match="start with 'mmi.'"):
        bus.core.add_mmi_handler("echo", lambda body: [])
    assert mmi(bus, b"mmi.service", b"echo") == b"mine"  # the refused one changed nothing


def test_a_custom_mmi_handler_that_raises_answers_500_and_the_broker_goes_on():
    bus = Bus()
    bus.core.add_mmi_handler("mmi.broken", lambda body: 1 / 0)
    assert mmi(bus, b"mmi.broken") == b"500"
    bus.ready(b"w")
    [(peer, request)] = bus.request(b"c", b"echo", b"x")
    assert peer == b"w" and request.body == [b"x"]


def test_a_service_nobody_offers_or_waits_for_is_forgotten_and_its_counters_kept_bounded():
    bus = Bus(request_expiry=1.0, heartbeat_interval=100.0, retired_services=50)
    for n in range(20_000):
        bus.at(n * 0.001).request(b"c", b"svc-%d" % n)
        if n % 1000 == 999:
            bus.tick(bus.now)
    bus.tick(100.0)
    assert bus.core.services == {}
    assert json.loads(mmi(bus, b"mmi.services")) == []
    assert len(bus.core.retired) == 50
    doc = status(bus)["services"]
    assert len(doc) == 50 and doc["svc-19999"]["expired"] == 1
    assert "svc-0" not in doc


def test_a_forgotten_service_comes_back_with_its_counters():
    bus = Bus(request_expiry=1.0, heartbeat_interval=100.0)
    bus.request(b"c", b"echo")
    bus.tick(1.0)
    assert b"echo" not in bus.core.services and b"echo" in bus.core.retired
    bus.ready(b"w")
    assert b"echo" in bus.core.services and b"echo" not in bus.core.retired
    assert status(bus)["services"]["echo"]["expired"] == 1
    assert mmi(bus, b"mmi.service", b"echo") == b"200"
    bus.disconnect(b"w")
    assert b"echo" not in bus.core.services


def test_a_refused_request_leaves_no_service_behind():
    bus = Bus(queue_limit=0)
    assert type(broker_error(only(bus.request(b"c"))[1])) is QueueFull
    assert bus.core.services == {} and status(bus)["services"]["echo"]["rejected"] == 1


def test_take_events_hands_over_and_empties():
    bus = Bus()
    bus.ready(b"w")
    assert [e.kind for e in bus.core.take_events()] == ["worker-ready"]
    assert bus.core.events == [] and bus.core.take_events() == []


def test_events_are_collected_only_once_enabled():
    core = BrokerCore(BrokerConfig(), 0.0, emit_events=False)
    core.handle(b"w1", p.worker_ready(V02, b"echo"), 0.0)
    assert core.take_events() == []
    core.enable_events()
    core.handle(b"w2", p.worker_ready(V02, b"echo"), 0.0)
    [event] = core.take_events()
    assert event.kind is EventKind.WORKER_READY and event.worker == "w2"


def test_event_kinds_are_an_enum_that_still_reads_as_text():
    bus = Bus()
    bus.ready(b"w")
    bus.request(b"c")
    assert all(type(e.kind) is EventKind for e in bus.core.events)
    assert [e.kind for e in bus.core.events] == [EventKind.WORKER_READY]  # served at once
    assert EventKind.DEMAND == "demand" and EventKind("worker-lost") is EventKind.WORKER_LOST
    assert f"{EventKind.DROPPED}" == str(EventKind.DROPPED) == "dropped"
    assert {kind.value for kind in EventKind} == EVENT_KINDS


# ------------------------------------------------------------ recorded exchanges

EXCHANGES = json.loads(VECTORS.read_text())["exchanges"]


@pytest.mark.parametrize("exchange", EXCHANGES, ids=[e["name"] for e in EXCHANGES])
def test_recorded_exchanges_replay_byte_for_byte(exchange):
    core = BrokerCore(BrokerConfig(**exchange["config"]), now=0.0)
    for step in exchange["steps"]:
        out = replay(core, step)
        got = [{"peer": peer.hex(), "frames": [bytes(f).hex() for f in frames]}
               for peer, frames in out]
        want = [{"peer": o["peer"], "frames": o["frames"]} for o in step["output"]]
        assert got == want, step


def replay(core: BrokerCore, step: dict) -> list:
    now = float(step["time"])
    if step.get("tick"):
        return core.tick(now)
    if step.get("shutdown"):
        return core.shutdown(now)
    if "disconnected" in step:
        return core.peer_disconnected(bytes.fromhex(step["disconnected"]), now)
    if "fail_queued" in step:
        f = step["fail_queued"]
        error = BrokerError(f["message"], f["service"], code=f["code"], reason=f["reason"])
        return core.fail_queued(f["service"].encode(), error)
    frames = [bytes.fromhex(h) for h in step["frames"]]
    return core.handle(bytes.fromhex(step["peer"]), frames, now)


# ------------------------------------------------------------ random interleavings

# Plain clients, and the connections of two clients that hold several (mdp.md 6.1), so
# that one client has several requests queued at once.
SHARED = {b"\x01share:node:1:aa/1": V02, b"\x01share:node:1:aa/2": V02,
          b"\x01share:node:1:aa/3": MT, b"share:node:2:bb/1": V01}
CLIENTS = {b"c-v02": V02, b"c-v01": V01, b"c-mt": MT, b"c2-v02": V02, **SHARED}
WORKERS = {b"w-v02": V02, b"w2-v02": V02, b"w-v01": V01, b"w-mt": MT}
GARBAGE_PEERS = [b"g1", b"g2"]
SERVICES = [b"echo", b"calc"]
SERVICES_OFTEN = [b"echo", b"echo", b"echo", b"calc"]
TOO_LONG = b"n" * (p.MAX_SERVICE_NAME + 1)
VOCABULARY = [b"", b"MDPC01", b"MDPC02", b"MDPW01", b"MDPW02", b"echo", b"mmi.service", ID1,
              *(bytes([i]) for i in range(8))]
garbage = st.lists(st.one_of(st.sampled_from(VOCABULARY), st.binary(max_size=6)), max_size=6)
LOG = logging.getLogger("mdp.broker")
EVENT_KINDS = {"demand", "worker-ready", "worker-lost", "served", "dropped"}


class BrokerMachine(RuleBasedStateMachine):
    """Clients with one request at a time, workers that echo the request's token."""

    @initialize(expiry=st.sampled_from([None, 2.0, 6.0]), limit=st.sampled_from([None, 3, 1, 0]),
                attempts=st.integers(1, 3), busy_timeout=st.sampled_from([None, 2.0, 10.0]),
                retired=st.sampled_from([0, 1, 1000]),
                workers=st.dictionaries(st.sampled_from(sorted(WORKERS)),
                                        st.sampled_from(SERVICES_OFTEN), min_size=1))
    def setup(self, expiry, limit, attempts, busy_timeout, retired, workers):
        config = BrokerConfig(heartbeat_interval=1.0, heartbeat_liveness=3,
                              busy_timeout=busy_timeout, request_expiry=expiry,
                              queue_limit=limit, max_attempts=attempts,
                              retired_services=retired)
        self.core = BrokerCore(config, 0.0)
        self.now = 0.0
        self.tokens = itertools.count()
        self.outstanding: dict[bytes, bytes | None] = {}  # client -> token (None: MMI)
        self.abandoned: set[bytes] = set()  # tokens of requests whose client went away
        self.finals: Counter = Counter()
        self.given: dict[bytes, list[p.WorkerRequest]] = {}  # worker -> what it was sent
        self.log_level = LOG.level
        LOG.setLevel(logging.ERROR)  # thousands of "dropped" warnings only slow this down

        for worker, service in workers.items():
            self.handle(worker, p.worker_ready(WORKERS[worker], service))

    def teardown(self):
        LOG.setLevel(self.log_level)

    # -------------------------------------------------------- rules

    def free_clients(self) -> list[bytes]:
        return [c for c in sorted(CLIENTS) if c not in self.outstanding]

    @precondition(lambda self: self.free_clients())
    @rule(data=st.data(), service=st.sampled_from(SERVICES_OFTEN + [b"other", TOO_LONG]))
    def client_request(self, data, service):
        client = data.draw(st.sampled_from(self.free_clients()), label="client")
        token = b"tok-%d" % next(self.tokens)
        self.outstanding[client] = token
        self.handle(client, p.client_request(CLIENTS[client], service, [token]))

    @precondition(lambda self: self.free_clients())
    @rule(data=st.data(),
          service=st.sampled_from([b"mmi.service", b"mmi.services", b"mmi.status",
                                   b"mmi.workers", b"mmi.nope"]),
          body=st.sampled_from([[], [b"echo"], [b"calc"], [b""]]))
    def mmi_request(self, data, service, body):
        client = data.draw(st.sampled_from(self.free_clients()), label="client")
        self.outstanding[client] = None
        self.handle(client, p.client_request(CLIENTS[client], service, body))
        assert client not in self.outstanding, "MMI must be answered at once"

    @rule(worker=st.sampled_from(sorted(WORKERS)),
          service=st.sampled_from([*SERVICES_OFTEN, b"mmi.mine", TOO_LONG]),
          again=st.sampled_from([False] * 4 + [True]),
          process=st.sampled_from([None, None, "p1", "p2"]))
    def ready(self, worker, service, again, process):
        """A registered worker mostly heartbeats; now and then it breaks the rules. Some
        say which process they are a connection of (two processes to share)."""
        d = WORKERS[worker]
        if worker in self.core.workers and not again:
            self.handle(worker, p.worker_heartbeat(d))
        else:
            metadata = b"" if process is None else json.dumps({"process": process}).encode()
            self.handle(worker, p.worker_ready(d, service, metadata))

    @precondition(lambda self: self.given)
    @rule(data=st.data(), final=st.booleans(), age=st.sampled_from([0, 0, 0, 1, 2, -1]),
          forge=st.sampled_from([False] * 5 + [True]))
    def worker_reply(self, data, final, age, forge):
        """Answer the last request this worker got, an older one (age > 0) or none (-1);
        now and then with a reply that poses as a broker error."""
        worker = data.draw(st.sampled_from(sorted(self.given)), label="worker")
        given = self.given[worker]
        d = WORKERS[worker]
        if age < 0:
            address, body = b"\xee" * 8, [b"made up"]
        else:
            request = given[max(0, len(given) - 1 - age)]
            address, body = request.address, list(request.body)
        if forge:
            body = broker_error_body(QueueFull("forged", "echo"))
        self.handle(worker, p.worker_reply(d, address, body, final or d is V01))

    @rule(worker=st.sampled_from(sorted(WORKERS)), leave=st.sampled_from([False] * 4 + [True]))
    def heartbeat_or_disconnect(self, worker, leave):
        command = p.worker_disconnect if leave else p.worker_heartbeat
        self.handle(worker, command(WORKERS[worker]))

    @rule(peer=st.sampled_from(GARBAGE_PEERS + sorted(CLIENTS) + sorted(WORKERS)))
    def connection_closed(self, peer):
        """A worker is gone for good; a client gives up (it may come back under the same
        identity, as a client that sets its own does)."""
        token = self.outstanding.pop(peer, None)
        if token is not None:
            self.abandoned.add(token)
        self.process(self.core.peer_disconnected(peer, self.now))

    @rule(peer=st.sampled_from(GARBAGE_PEERS + sorted(CLIENTS) + sorted(WORKERS)),
          frames=garbage)
    def garbage(self, peer, frames):
        """Strangers may send anything; known peers only what no dialect allows."""
        if peer not in GARBAGE_PEERS:
            try:
                p.parse_peer_message(frames)
                return
            except p.ProtocolError:
                pass
        self.handle(peer, frames)

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0, 1.0, 3.5, 7.0]))
    def tick(self, dt):
        self.now += dt
        self.process(self.core.tick(self.now))
        assert self.core.next_deadline() > self.now

    @rule()
    def tick_at_the_deadline(self):
        deadline = self.core.next_deadline()
        self.now = max(self.now, deadline)
        self.process(self.core.tick(self.now))
        assert self.core.next_deadline() > self.now

    @rule(service=st.sampled_from(SERVICES))
    def fail_queued(self, service):
        error = ServiceStartFailed("could not start", service.decode())
        self.process(self.core.fail_queued(service, error))

    @rule()
    def shutdown(self):
        workers = {peer: worker.dialect for peer, worker in self.core.workers.items()}
        out = self.core.shutdown(self.now)
        for peer, dialect in workers.items():
            assert (peer, p.to_worker_disconnect(dialect)) in out
        self.process(out)
        assert not {c: t for c, t in self.outstanding.items() if t is not None}, \
            "a request the broker held got no answer when it stopped"
        assert self.core.workers == {} and self.core.services == {}

    # -------------------------------------------------------- what the broker sent

    def handle(self, peer: bytes, frames: list) -> None:
        self.process(self.core.handle(peer, frames, self.now))

    def process(self, out: list) -> None:
        for peer, frames in out:
            if peer in CLIENTS:
                self.to_client(peer, p.parse_client_reply(CLIENTS[peer], frames))
            elif peer in WORKERS:
                self.to_worker(peer, p.parse_worker_message(WORKERS[peer], frames))
        for event in self.core.events:
            assert event.kind in EVENT_KINDS
            assert 0 <= event.busy <= event.workers and event.queued >= 0
        self.core.events.clear()

    def to_client(self, client: bytes, reply: p.ClientReply) -> None:
        assert client in self.outstanding, "a client got a reply it did not wait for"
        token = self.outstanding[client]
        assert not self.abandoned & {bytes(f) for f in reply.body}, \
            "a reply for a request whose client went away"
        marker = reserved_marker(reply.body)
        if marker == BROKER_ERROR_MARKER:
            assert reply.final and decode_broker_error(reply.body).code in (400, 500, 502, 503, 504)
        elif token is not None and marker is None:
            assert all(bytes(f) == token for f in reply.body), "a reply for another request"
        if reply.final:
            del self.outstanding[client]
            if token is not None:
                self.finals[token] += 1
                assert self.finals[token] == 1

    def to_worker(self, worker: bytes, message: p.ToWorker) -> None:
        if isinstance(message, p.WorkerRequest):
            assert len(message.address) == 8
            token = bytes(message.body[0]) if len(message.body) == 1 else b""
            if token.startswith(b"tok-"):  # not a stranger's request
                assert token in self.outstanding.values(), "a request nobody waits for"
            self.given.setdefault(worker, []).append(message)

    # -------------------------------------------------------- invariants

    @invariant()
    def workers_are_where_they_belong(self):
        core = self.core
        for peer, worker in core.workers.items():
            assert worker.peer == peer
            state = core.services[worker.service]
            assert peer in state.workers
            assert (peer in state.idle) == (worker.state is WorkerState.IDLE)
            assert (worker.request is None) == (worker.state is WorkerState.IDLE)
            assert worker.request is None or worker.request.service == worker.service
        for state in core.services.values():
            assert all(core.workers[peer].service == state.name for peer in state.workers)
            assert all(core.workers[peer] is worker for peer, worker in state.idle.items())
            assert set(state.idle) <= state.workers
            assert not (state.queue and state.idle), "a request waits beside an idle worker"

    @invariant()
    def processes_count_their_connections(self):
        for state in self.core.services.values():
            workers = [self.core.workers[peer] for peer in state.workers]
            for process in state.processes.values():
                mine = [w for w in workers if w.process is process]
                assert process.connections == len(mine) > 0
                assert process.busy == sum(w.state is WorkerState.BUSY for w in mine)
            assert all(state.processes.get(w.metadata.get("process", w.peer)) is w.process
                       for w in workers)

    @invariant()
    def only_services_in_use_are_kept(self):
        core = self.core
        assert all(state.in_use() for state in core.services.values()), "a service kept"
        assert not set(core.services) & set(core.retired)
        assert all(not state.in_use() for state in core.retired.values())
        assert len(core.retired) <= core.config.retired_services
        assert all(len(name) <= p.MAX_SERVICE_NAME for name in core.services)

    @invariant()
    def every_request_is_in_one_place(self):
        queued = [r for s in self.core.services.values() for r in s.queue]
        held = [w.request for w in self.core.workers.values() if w.request is not None]
        assert len({id(r) for r in queued + held}) == len(queued) + len(held)
        for state in self.core.services.values():
            assert all(r.service == state.name for r in state.queue)
            assert all(r.expires_at > self.now for r in state.queue)
            shares = state.queue.clients
            assert all(shares[client_of(r.client)] is r.share for r in state.queue)
            for share in shares.values():
                fresh = [r.id for r in share.queue if r.attempts == 0]
                assert fresh == sorted(fresh), "a client's order broken"
                put_back = list(share.queue)[:len(share.queue) - len(fresh)]
                assert all(r.attempts > 0 for r in put_back), \
                    "a request re-queued behind fresh ones"
                assert share.in_flight == sum(r.share is share for r in held)
            assert len(state.queue) == sum(len(share.queue) for share in shares.values())
            assert state.queue.waiting_clients() == sum(1 for share in shares.values()
                                                        if share.queue)
            order = [r.share for r in state.queue]
            assert len(order) == len(set(map(id, order))) + sum(
                a is b for a, b in itertools.pairwise(order)), "a client has two places in line"
        assert not any(r.abandoned for r in queued), "a request nobody waits for is queued"
        live = [r for r in queued + held if r.client in CLIENTS and not r.abandoned]
        mine = {r.client: r for r in live}
        assert len(mine) == len(live)
        waiting = {c: t for c, t in self.outstanding.items() if t is not None}
        assert set(mine) == set(waiting), "a request lost, or an answered one kept"
        for client, request in mine.items():
            assert request.body == [waiting[client]]


TestBrokerMachine = BrokerMachine.TestCase
TestBrokerMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
