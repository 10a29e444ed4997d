"""Tests of the MDP wire codec (mdp/protocol.py) and the error conventions (mdp/errors.py):
the byte-exact vectors of protocol/vectors/mdp.json both ways, round trips in every
dialect, rejection of every malformed shape with ProtocolError and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import majortomo.protocol as mt
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from mdp import protocol as p
from mdp.client import check_reply
from mdp.errors import (
    BROKER_ERROR_MARKER,
    WORKER_ERROR_MARKER,
    AttemptsExhausted,
    BrokerError,
    BrokerStopping,
    MDPError,
    QueueFull,
    RequestExpired,
    ServiceNameTooLong,
    ServiceStartFailed,
    WorkerError,
    broker_error_body,
    decode_broker_error,
    decode_worker_error,
    is_worker_error,
    reserved_marker,
    worker_error_body,
)

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "mdp.json"
DATA = json.loads(VECTORS.read_text())
DIALECTS = list(p.Dialect)
V02, V01, MT = p.Dialect.V02, p.Dialect.V01, p.Dialect.MAJORTOMO
ADDR = b"\x00\x00\x00\x00\x00\x00\x00\x07"
ANNOTATIONS = ("error", "worker_error")


# ------------------------------------------------------------ meaning <-> frames


def to_bytes(frame: str | dict) -> bytes:
    return bytes.fromhex(frame["hex"]) if isinstance(frame, dict) else frame.encode()


def to_json(frame: Any) -> str | dict:
    raw = bytes(frame)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return {"hex": raw.hex()}
    return text if text.isprintable() else {"hex": raw.hex()}


def body_of(meaning: dict) -> list[bytes]:
    return [to_bytes(f) for f in meaning["body"]]


def is_final(command: str) -> bool:
    return command != "PARTIAL"


def encode(vector: dict) -> list:
    d, m, direction = p.Dialect(vector["dialect"]), vector["meaning"], vector["direction"]
    command = m["command"]
    if direction == "client-to-broker":
        return p.client_request(d, m["service"].encode(), body_of(m))
    if direction == "broker-to-client":
        service = (m["service"] or "").encode()
        return p.to_client_reply(d, service, body_of(m), final=is_final(command))
    if direction == "worker-to-broker":
        return encode_from_worker(d, m)
    return encode_to_worker(d, m)


def encode_from_worker(d: p.Dialect, m: dict) -> list:
    command = m["command"]
    if command == "READY":
        return p.worker_ready(d, m["service"].encode())
    if command == "HEARTBEAT":
        return p.worker_heartbeat(d)
    if command == "DISCONNECT":
        return p.worker_disconnect(d)
    return p.worker_reply(d, bytes.fromhex(m["address"]), body_of(m), is_final(command))


def encode_to_worker(d: p.Dialect, m: dict) -> list:
    if m["command"] == "HEARTBEAT":
        return p.to_worker_heartbeat(d)
    if m["command"] == "DISCONNECT":
        return p.to_worker_disconnect(d)
    return p.to_worker_request(d, bytes.fromhex(m["address"]), body_of(m))


def final_name(d: p.Dialect) -> str:
    return "REPLY" if d is V01 else "FINAL"


def parse(vector: dict, frames: list) -> dict:
    d, direction = p.Dialect(vector["dialect"]), vector["direction"]
    if direction == "broker-to-client":
        reply = p.parse_client_reply(d, frames)
        return {"command": final_name(d) if reply.final else "PARTIAL",
                "service": None if reply.service is None else reply.service.decode(),
                "body": [to_json(f) for f in reply.body]}
    if direction == "broker-to-worker":
        return meaning_to_worker(p.parse_worker_message(d, frames))
    message = p.parse_peer_message(frames)
    assert message.dialect is d
    return meaning_from_peer(message)


def meaning_from_peer(message: p.FromPeer) -> dict:
    if isinstance(message, p.ClientRequest):
        return {"command": "REQUEST", "service": message.service.decode(),
                "body": [to_json(f) for f in message.body]}
    if isinstance(message, p.Ready):
        return {"command": "READY", "service": message.service.decode()}
    if isinstance(message, p.WorkerReply):
        command = final_name(message.dialect) if message.final else "PARTIAL"
        return {"command": command, "address": message.address.hex(),
                "body": [to_json(f) for f in message.body]}
    return {"command": "HEARTBEAT" if isinstance(message, p.Heartbeat) else "DISCONNECT"}


def meaning_to_worker(message: p.ToWorker) -> dict:
    if isinstance(message, p.WorkerRequest):
        return {"command": "REQUEST", "address": message.address.hex(),
                "body": [to_json(f) for f in message.body]}
    return {"command": "HEARTBEAT" if isinstance(message, p.Heartbeat) else "DISCONNECT"}


def plain(meaning: dict) -> dict:
    return {k: v for k, v in meaning.items() if k not in ANNOTATIONS}


VECTOR_IDS = [v["name"] for v in DATA["vectors"]]


# ------------------------------------------------------------ the vectors


def test_vectors_cover_every_command_of_every_dialect_and_direction():
    seen = {(v["dialect"], v["direction"], v["meaning"]["command"]) for v in DATA["vectors"]}
    expected = set()
    for d in ("MDP/0.2", "majortomo"):
        expected |= {(d, "client-to-broker", "REQUEST"), (d, "broker-to-client", "PARTIAL"),
                     (d, "broker-to-client", "FINAL"), (d, "worker-to-broker", "PARTIAL"),
                     (d, "worker-to-broker", "FINAL")}
    expected |= {("MDP/0.1", "client-to-broker", "REQUEST"),
                 ("MDP/0.1", "broker-to-client", "REPLY"),
                 ("MDP/0.1", "worker-to-broker", "REPLY")}
    for d in ("MDP/0.2", "MDP/0.1", "majortomo"):
        expected |= {(d, "worker-to-broker", c) for c in ("READY", "HEARTBEAT", "DISCONNECT")}
        expected |= {(d, "broker-to-worker", c) for c in ("REQUEST", "HEARTBEAT", "DISCONNECT")}
    assert seen == expected
    assert len(set(VECTOR_IDS)) == len(VECTOR_IDS)


@pytest.mark.parametrize("vector", DATA["vectors"], ids=VECTOR_IDS)
def test_encoding_the_meaning_gives_the_frames(vector):
    assert [bytes(f).hex() for f in encode(vector)] == vector["frames"]


@pytest.mark.parametrize("vector", DATA["vectors"], ids=VECTOR_IDS)
def test_parsing_the_frames_gives_the_meaning(vector):
    frames = [bytes.fromhex(h) for h in vector["frames"]]
    assert parse(vector, frames) == plain(vector["meaning"])


@pytest.mark.parametrize("vector", DATA["vectors"], ids=VECTOR_IDS)
def test_frames_parse_in_their_own_dialect_only(vector):
    frames = [bytes.fromhex(h) for h in vector["frames"]]
    for other in DIALECTS:
        if other.value == vector["dialect"]:
            continue
        if vector["direction"] == "broker-to-client":
            with pytest.raises(p.ProtocolError):
                p.parse_client_reply(other, frames)
        elif vector["direction"] == "broker-to-worker":
            with pytest.raises(p.ProtocolError):
                p.parse_worker_message(other, frames)


ERROR_VECTORS = [v for v in DATA["vectors"] if "error" in v["meaning"]]
CLASSES = {"expired": RequestExpired, "queue-full": QueueFull,
           "attempts-exhausted": AttemptsExhausted, "start-failed": ServiceStartFailed,
           "broker-stopping": BrokerStopping, "name-too-long": ServiceNameTooLong}


@pytest.mark.parametrize("vector", ERROR_VECTORS, ids=[v["name"] for v in ERROR_VECTORS])
def test_broker_error_vectors_raise_their_typed_exception(vector):
    expected = vector["meaning"]["error"]
    reply = p.parse_client_reply(p.Dialect(vector["dialect"]),
                                 [bytes.fromhex(h) for h in vector["frames"]])
    with pytest.raises(CLASSES[expected["reason"]]) as caught:
        check_reply(reply, b"echo")
    error = caught.value
    assert (error.code, error.reason) == (expected["code"], expected["reason"])
    assert (error.message, error.service) == (expected["message"], expected["service"])


WORKER_ERROR_VECTORS = [v for v in DATA["vectors"] if "worker_error" in v["meaning"]]


@pytest.mark.parametrize("vector", WORKER_ERROR_VECTORS,
                         ids=[v["name"] for v in WORKER_ERROR_VECTORS])
def test_worker_error_vectors_raise_worker_error(vector):
    reply = p.parse_client_reply(p.Dialect(vector["dialect"]),
                                 [bytes.fromhex(h) for h in vector["frames"]])
    with pytest.raises(WorkerError) as caught:
        check_reply(reply, b"echo")
    expected = vector["meaning"]["worker_error"]
    assert (caught.value.error_type, caught.value.message) == \
        (expected["type"], expected["message"])
    assert (caught.value.traceback, caught.value.worker) == \
        (expected["traceback"], expected["worker"])
    assert caught.value.service == "echo"


@pytest.mark.parametrize("vector", ERROR_VECTORS, ids=[v["name"] for v in ERROR_VECTORS])
def test_broker_errors_carry_the_requested_service_in_the_service_frame(vector):
    """RFC 7 and RFC 18 clients check that a reply names the service they asked for."""
    reply = p.parse_client_reply(p.Dialect(vector["dialect"]),
                                 [bytes.fromhex(h) for h in vector["frames"]])
    assert reply.service == (None if vector["dialect"] == "majortomo" else b"echo")
    assert bytes(reply.body[0]) == BROKER_ERROR_MARKER


def test_the_vector_file_is_what_the_generator_writes():
    import importlib.util

    path = VECTORS.with_name("make_mdp_vectors.py")
    spec = importlib.util.spec_from_file_location("make_mdp_vectors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == DATA


# ------------------------------------------------------------ independent spot checks


def test_rfc18_layouts_literally():
    assert p.client_request(V02, b"echo", [b"hi"]) == [b"MDPC02", b"\x01", b"echo", b"hi"]
    assert p.to_client_reply(V02, b"echo", [b"a"], final=False) == \
        [b"MDPC02", b"\x02", b"echo", b"a"]
    assert p.to_client_reply(V02, b"echo", [b"b"]) == [b"MDPC02", b"\x03", b"echo", b"b"]
    assert p.worker_ready(V02, b"echo") == [b"MDPW02", b"\x01", b"echo"]
    assert p.to_worker_request(V02, ADDR, [b"x"]) == [b"MDPW02", b"\x02", ADDR, b"", b"x"]
    assert p.worker_reply(V02, ADDR, [b"y"], False) == [b"MDPW02", b"\x03", ADDR, b"", b"y"]
    assert p.worker_reply(V02, ADDR, [b"y"], True) == [b"MDPW02", b"\x04", ADDR, b"", b"y"]
    assert p.worker_heartbeat(V02) == [b"MDPW02", b"\x05"]
    assert p.worker_disconnect(V02) == [b"MDPW02", b"\x06"]


def test_rfc7_layouts_literally():
    assert p.client_request(V01, b"echo", [b"hi"]) == [b"", b"MDPC01", b"echo", b"hi"]
    assert p.to_client_reply(V01, b"echo", [b"b"]) == [b"", b"MDPC01", b"echo", b"b"]
    assert p.worker_ready(V01, b"echo") == [b"", b"MDPW01", b"\x01", b"echo"]
    assert p.to_worker_request(V01, ADDR, [b"x"]) == \
        [b"", b"MDPW01", b"\x02", ADDR, b"", b"x"]
    assert p.worker_reply(V01, ADDR, [b"y"], True) == [b"", b"MDPW01", b"\x03", ADDR, b"", b"y"]
    assert p.worker_heartbeat(V01) == [b"", b"MDPW01", b"\x04"]
    assert p.worker_disconnect(V01) == [b"", b"MDPW01", b"\x05"]


def test_majortomo_layouts_match_the_majortomo_package():
    """Frames as majortomo's own client, worker and broker build them."""
    assert p.client_request(MT, b"echo", [b"hi"]) == \
        [b"", mt.CLIENT_HEADER, mt.REQUEST, b"echo", b"hi"]
    assert p.to_client_reply(MT, b"echo", [b"a"], final=False) == \
        [b"", mt.CLIENT_HEADER, mt.PARTIAL, b"a"]
    assert p.to_client_reply(MT, b"echo", [b"b"]) == [b"", mt.CLIENT_HEADER, mt.FINAL, b"b"]
    assert p.worker_ready(MT, b"echo") == [b"", mt.WORKER_HEADER, mt.READY, b"echo"]
    assert p.to_worker_request(MT, ADDR, [b"x"]) == \
        [b"", mt.WORKER_HEADER, mt.REQUEST, ADDR, b"", b"x"]
    assert p.worker_reply(MT, ADDR, [b"y"], False) == \
        [b"", mt.WORKER_HEADER, mt.PARTIAL, ADDR, b"", b"y"]
    assert p.worker_reply(MT, ADDR, [b"y"], True) == \
        [b"", mt.WORKER_HEADER, mt.FINAL, ADDR, b"", b"y"]
    assert p.worker_heartbeat(MT) == [b"", mt.WORKER_HEADER, mt.HEARTBEAT]
    assert p.worker_disconnect(MT) == [b"", mt.WORKER_HEADER, mt.DISCONNECT]


def test_mdp01_has_no_partial_to_encode():
    with pytest.raises(ValueError):
        p.to_client_reply(V01, b"echo", [b"a"], final=False)
    with pytest.raises(ValueError):
        p.worker_reply(V01, ADDR, [b"a"], final=False)


def test_trailing_frames_after_ready_metadata_heartbeat_disconnect_are_ignored():
    assert p.parse_peer_message([b"MDPW02", b"\x01", b"echo", b"{}", b"x"]) == \
        p.Ready(V02, b"echo", b"{}")  # the frame after the service is metadata (mdp.md 5.4)
    assert p.parse_peer_message([b"", b"MDPW01", b"\x04", b"x"]) == p.Heartbeat(V01)
    assert p.parse_peer_message([b"", b"MDPW02", b"\x06", b"x"]) == p.Disconnect(MT)


# ------------------------------------------------------------ round trips


services = st.binary(min_size=1, max_size=20)
bodies = st.lists(st.binary(max_size=20), max_size=5)
addresses = st.binary(max_size=12)
dialects = st.sampled_from(DIALECTS)


@given(dialects, services, bodies)
def test_client_request_round_trip(d, service, body):
    assert p.parse_peer_message(p.client_request(d, service, body)) == \
        p.ClientRequest(d, service, body)


@given(dialects, services, bodies, st.booleans())
def test_client_reply_round_trip(d, service, body, final):
    final = final or d is V01
    reply = p.parse_client_reply(d, p.to_client_reply(d, service, body, final))
    assert reply == p.ClientReply(None if d is MT else service, body, final)


@given(dialects, services, st.binary(max_size=20))
def test_ready_round_trip(d, service, metadata):
    assert p.parse_peer_message(p.worker_ready(d, service)) == p.Ready(d, service)
    assert p.parse_peer_message(p.worker_ready(d, service, metadata)) == \
        p.Ready(d, service, metadata)


@given(dialects, addresses, bodies, st.booleans())
def test_worker_reply_round_trip(d, address, body, final):
    final = final or d is V01
    assert p.parse_peer_message(p.worker_reply(d, address, body, final)) == \
        p.WorkerReply(d, address, body, final)


@given(dialects, addresses, bodies)
def test_worker_request_round_trip(d, address, body):
    assert p.parse_worker_message(d, p.to_worker_request(d, address, body)) == \
        p.WorkerRequest(address, body)


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_heartbeat_and_disconnect_round_trip_both_ways(d):
    for encode_, kind in ((p.worker_heartbeat, p.Heartbeat), (p.worker_disconnect, p.Disconnect)):
        assert p.parse_peer_message(encode_(d)) == kind(d)
        assert p.parse_worker_message(d, encode_(d)) == kind(d)
    assert p.to_worker_heartbeat(d) == p.worker_heartbeat(d)
    assert p.to_worker_disconnect(d) == p.worker_disconnect(d)


@pytest.mark.parametrize("d", DIALECTS, ids=lambda d: d.value)
def test_body_frames_pass_through_untouched(d):
    """Zero copy: the very objects given are the ones handed on."""
    body = [zmq.Frame(b"one"), memoryview(b"two"), bytearray(b"three")]
    request = p.parse_peer_message([zmq.Frame(f) for f in p.client_request(d, b"s", [])] + body)
    assert all(a is b for a, b in zip(request.body, body, strict=True))
    frames = [zmq.Frame(f) for f in p.worker_reply(d, ADDR, [], True)] + body
    reply = p.parse_peer_message(frames)
    assert reply.address == ADDR and type(reply.address) is bytes
    assert all(a is b for a, b in zip(reply.body, body, strict=True))
    assert all(a is b for a, b in zip(p.to_worker_request(d, ADDR, body)[-3:], body, strict=True))
    frames = [zmq.Frame(f) for f in p.to_worker_request(d, ADDR, [])] + body
    assert all(a is b for a, b in zip(p.parse_worker_message(d, frames).body, body,
                                      strict=True))


# ------------------------------------------------------------ malformed shapes

A = ADDR
MALFORMED_PEER = {
    "nothing": [],
    "lone-empty": [b""],
    "unknown-header": [b"MDPC03", b"\x01", b"echo"],
    "unknown-header-after-empty": [b"", b"MDPX01", b"echo"],
    "two-empty-frames": [b"", b"", b"MDPC01", b"echo"],
    "v02-client-no-command": [b"MDPC02"],
    "v02-client-no-service": [b"MDPC02", b"\x01"],
    "v02-client-empty-service": [b"MDPC02", b"\x01", b""],
    "v02-client-sends-partial": [b"MDPC02", b"\x02", b"echo"],
    "v02-client-sends-final": [b"MDPC02", b"\x03", b"echo"],
    "v02-client-long-command": [b"MDPC02", b"\x01\x00", b"echo"],
    "v02-client-majortomo-number": [b"MDPC02", b"\x02", b"echo", b"x"],
    "majortomo-client-v02-number": [b"", b"MDPC02", b"\x01", b"echo"],
    "majortomo-client-no-service": [b"", b"MDPC02", b"\x02"],
    "majortomo-client-empty-service": [b"", b"MDPC02", b"\x02", b""],
    "v01-client-no-service": [b"", b"MDPC01"],
    "v01-client-empty-service": [b"", b"MDPC01", b""],
    "v01-client-no-empty-frame": [b"MDPC01", b"echo"],
    "v02-worker-no-command": [b"MDPW02"],
    "v02-worker-sends-request": [b"MDPW02", b"\x02", A, b""],
    "v02-worker-command-0": [b"MDPW02", b"\x00"],
    "v02-worker-command-7": [b"MDPW02", b"\x07"],
    "v02-worker-empty-command": [b"MDPW02", b""],
    "v02-ready-no-service": [b"MDPW02", b"\x01"],
    "v02-ready-empty-service": [b"MDPW02", b"\x01", b""],
    "v02-final-no-address": [b"MDPW02", b"\x04"],
    "v02-final-no-delimiter": [b"MDPW02", b"\x04", A],
    "v02-final-bad-delimiter": [b"MDPW02", b"\x04", A, b"x"],
    "v02-partial-no-delimiter": [b"MDPW02", b"\x03", A],
    "v01-worker-no-command": [b"", b"MDPW01"],
    "v01-worker-v02-disconnect": [b"", b"MDPW01", b"\x06"],
    "v01-worker-sends-request": [b"", b"MDPW01", b"\x02", A, b""],
    "v01-reply-no-delimiter": [b"", b"MDPW01", b"\x03", A],
    "v01-worker-no-empty-frame": [b"MDPW01", b"\x01", b"echo"],
    "majortomo-worker-no-command": [b"", b"MDPW02"],
    "majortomo-worker-sends-request": [b"", b"MDPW02", b"\x02", A, b""],
    "majortomo-final-bad-delimiter": [b"", b"MDPW02", b"\x04", A, b"x"],
}

MALFORMED_CLIENT_REPLY = {
    V02: {"nothing": [], "other-header": [b"MDPC01", b"\x03", b"echo"],
          "leading-empty": [b"", b"MDPC02", b"\x03", b"echo"],
          "no-command": [b"MDPC02"], "request-command": [b"MDPC02", b"\x01", b"echo"],
          "majortomo-final-number": [b"MDPC02", b"\x04", b"echo"],
          "no-service": [b"MDPC02", b"\x03"], "worker-header": [b"MDPW02", b"\x03", b"echo"]},
    V01: {"nothing": [], "lone-empty": [b""], "no-empty": [b"MDPC01", b"echo"],
          "no-service": [b"", b"MDPC01"], "v02-header": [b"", b"MDPC02", b"\x04", b"echo"]},
    MT: {"nothing": [], "no-empty": [b"MDPC02", b"\x04"], "no-command": [b"", b"MDPC02"],
         "request-command": [b"", b"MDPC02", b"\x02"],
         "v02-final-number": [b"", b"MDPC02", b"\x01"],
         "long-command": [b"", b"MDPC02", b"\x04\x00"], "v01-header": [b"", b"MDPC01", b"s"]},
}

MALFORMED_WORKER_MESSAGE = {
    V02: {"nothing": [], "no-command": [b"MDPW02"], "ready": [b"MDPW02", b"\x01", b"echo"],
          "final": [b"MDPW02", b"\x04", A, b""], "request-no-address": [b"MDPW02", b"\x02"],
          "request-no-delimiter": [b"MDPW02", b"\x02", A],
          "request-bad-delimiter": [b"MDPW02", b"\x02", A, b"x"],
          "leading-empty": [b"", b"MDPW02", b"\x05"], "v01-header": [b"MDPW01", b"\x04"],
          "client-header": [b"MDPC02", b"\x05"]},
    V01: {"nothing": [], "no-command": [b"", b"MDPW01"], "command-6": [b"", b"MDPW01", b"\x06"],
          "reply": [b"", b"MDPW01", b"\x03", A, b""], "no-empty": [b"MDPW01", b"\x04"],
          "request-no-delimiter": [b"", b"MDPW01", b"\x02", A]},
    MT: {"nothing": [], "no-empty": [b"MDPW02", b"\x05"], "command-7": [b"", b"MDPW02", b"\x07"],
         "v01-heartbeat-number": [b"", b"MDPW02", b"\x04"],
         "request-no-delimiter": [b"", b"MDPW02", b"\x02", A]},
}


@pytest.mark.parametrize("frames", MALFORMED_PEER.values(), ids=MALFORMED_PEER.keys())
def test_malformed_peer_messages_raise_protocol_error(frames):
    with pytest.raises(p.ProtocolError):
        p.parse_peer_message(frames)


def _cases(table: dict) -> list:
    return [pytest.param(d, frames, id=f"{d.value}-{name}")
            for d, shapes in table.items() for name, frames in shapes.items()]


@pytest.mark.parametrize(("d", "frames"), _cases(MALFORMED_CLIENT_REPLY))
def test_malformed_client_replies_raise_protocol_error(d, frames):
    with pytest.raises(p.ProtocolError):
        p.parse_client_reply(d, frames)


@pytest.mark.parametrize(("d", "frames"), _cases(MALFORMED_WORKER_MESSAGE))
def test_malformed_worker_messages_raise_protocol_error(d, frames):
    with pytest.raises(p.ProtocolError):
        p.parse_worker_message(d, frames)


def test_protocol_error_is_a_value_error():
    assert issubclass(p.ProtocolError, ValueError)


# ------------------------------------------------------------ fuzzing

VOCABULARY = [b"", b"MDPC01", b"MDPC02", b"MDPW01", b"MDPW02", b"echo", b"mmi.service", ADDR,
              *(bytes([i]) for i in range(8))]
HEADS = [[], [b"MDPC02"], [b"MDPW02"], [b""], [b"", b"MDPC01"], [b"", b"MDPW01"],
         [b"", b"MDPC02"], [b"", b"MDPW02"]]
frame = st.one_of(st.sampled_from(VOCABULARY), st.binary(max_size=10))
# Half the lists start with a real header and command, so the fuzzing reaches deep paths.
headed = st.builds(lambda head, command, tail: [*head, command, *tail], st.sampled_from(HEADS),
                   st.sampled_from([bytes([i]) for i in range(8)]), st.lists(frame, max_size=6))
frame_lists = st.one_of(st.lists(frame, max_size=8), headed)
FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(frame_lists)
def test_fuzz_parse_peer_message(frames):
    try:
        message = p.parse_peer_message(frames)
    except p.ProtocolError:
        return
    assert_canonical_peer_message(message, frames)


def assert_canonical_peer_message(message: p.FromPeer, frames: list) -> None:
    """Whatever is accepted is exactly what the encoder makes (plus ignored trailers)."""
    d = message.dialect
    if isinstance(message, p.ClientRequest):
        assert p.client_request(d, message.service, message.body) == frames
    elif isinstance(message, p.WorkerReply):
        assert p.worker_reply(d, message.address, message.body, message.final) == frames
    else:
        encoded = {p.Ready: lambda: p.worker_ready(d, message.service, message.metadata),
                   p.Heartbeat: lambda: p.worker_heartbeat(d),
                   p.Disconnect: lambda: p.worker_disconnect(d)}[type(message)]()
        assert frames[:len(encoded)] == encoded


@FUZZ
@given(dialects, frame_lists)
def test_fuzz_parse_client_reply(d, frames):
    try:
        reply = p.parse_client_reply(d, frames)
    except p.ProtocolError:
        return
    assert p.to_client_reply(d, reply.service or b"", reply.body, reply.final) == frames


@FUZZ
@given(dialects, frame_lists)
def test_fuzz_parse_worker_message(d, frames):
    try:
        message = p.parse_worker_message(d, frames)
    except p.ProtocolError:
        return
    if isinstance(message, p.WorkerRequest):
        assert p.to_worker_request(d, message.address, message.body) == frames
    else:
        encoded = (p.to_worker_heartbeat(d) if isinstance(message, p.Heartbeat)
                   else p.to_worker_disconnect(d))
        assert frames[:len(encoded)] == encoded


@FUZZ
@given(st.lists(st.binary(max_size=30), max_size=10))
def test_fuzz_any_bytes_never_raise_anything_else(frames):
    for parse_ in (p.parse_peer_message,
                   *(lambda f, d=d: p.parse_client_reply(d, f) for d in DIALECTS),
                   *(lambda f, d=d: p.parse_worker_message(d, f) for d in DIALECTS)):
        try:
            parse_(frames)
        except p.ProtocolError:
            pass


# ------------------------------------------------------------ error conventions


@pytest.mark.parametrize("cls", [RequestExpired, QueueFull, AttemptsExhausted,
                                 ServiceStartFailed, BrokerStopping, ServiceNameTooLong])
def test_broker_error_round_trip(cls):
    body = broker_error_body(cls("it went wrong", "échø"))
    assert body[:3] == [BROKER_ERROR_MARKER, str(cls.code).encode(), cls.reason.encode()]
    error = decode_broker_error([memoryview(f) for f in body], "échø")
    assert type(error) is cls
    assert (error.code, error.message, error.service) == (cls.code, "it went wrong", "échø")
    assert str(error) == f"[{cls.code} {cls.reason}] it went wrong"


def test_unknown_broker_error_keeps_code_and_reason():
    error = decode_broker_error([BROKER_ERROR_MARKER, b"418", b"teapot", b"short", b"more"],
                                "tea")
    assert type(error) is BrokerError
    assert (error.code, error.reason, error.message, error.service) == \
        (418, "teapot", "short", "tea")


def test_short_or_garbled_broker_error_still_decodes():
    assert decode_broker_error([BROKER_ERROR_MARKER]).code == 500
    error = decode_broker_error([BROKER_ERROR_MARKER, b"x5", b"expired", b"\xff"])
    assert type(error) is RequestExpired and error.code == 500
    assert error.message == "\ufffd" and error.service == ""


def test_worker_error_body_and_detection():
    body = worker_error_body("KeyError", "'energy'", "Traceback ...\nKeyError", "h:1:2")
    assert body == [WORKER_ERROR_MARKER, b"KeyError", b"'energy'", b"Traceback ...\nKeyError",
                    b"h:1:2"]
    assert is_worker_error(body) and is_worker_error([memoryview(body[0])])
    assert not is_worker_error([])
    assert not is_worker_error([b"mdp.worker-error"])
    assert not is_worker_error([b"\x00mdp.worker-errors"])
    assert not is_worker_error([b"\x01mdp.worker-error"])
    assert not is_worker_error([BROKER_ERROR_MARKER])
    error = decode_worker_error(body, "calc")
    assert (error.error_type, error.message, error.service) == ("KeyError", "'energy'", "calc")
    assert (error.traceback, error.worker) == ("Traceback ...\nKeyError", "h:1:2")
    old = decode_worker_error(body[:3])  # before tracebacks and worker names
    assert (old.error_type, old.message, old.traceback, old.worker) == \
        ("KeyError", "'energy'", "", "")
    assert decode_worker_error([WORKER_ERROR_MARKER]).error_type == ""


def test_markers_are_seventeen_bytes_starting_with_nul():
    assert WORKER_ERROR_MARKER == b"\x00" + b"mdp.worker-error"
    assert BROKER_ERROR_MARKER == b"\x00" + b"mdp.broker-error"
    assert len(WORKER_ERROR_MARKER) == len(BROKER_ERROR_MARKER) == 17
    assert reserved_marker([b"\x00mdp.broker-error", b"x"]) == BROKER_ERROR_MARKER
    assert reserved_marker([b"\x00mdp.other-errorx"]) is None
    assert reserved_marker([b""]) is None and reserved_marker([]) is None


def test_client_reads_the_error_markers_in_every_dialect():
    body = broker_error_body(QueueFull("full", "ignored"))
    for service in (b"echo", None):  # None: majortomo, no service frame
        with pytest.raises(QueueFull) as caught:
            check_reply(p.ClientReply(service, body), b"echo")
        assert caught.value.service == "echo"  # what the client asked for
        with pytest.raises(WorkerError):
            check_reply(p.ClientReply(service, worker_error_body("E", "m")), b"echo")
    # The old convention (service frame mmi.error) is an ordinary reply now.
    old = [b"503", b"queue-full", b"full", b"echo"]
    assert check_reply(p.ClientReply(b"mmi.error", old), b"echo") == old


def test_error_classes_are_mdp_errors():
    assert issubclass(p.ProtocolError, MDPError) and issubclass(p.ProtocolError, ValueError)
    from mdp.security import CurveError

    assert issubclass(CurveError, MDPError)


def test_service_names_go_on_the_wire_as_utf8():
    assert p.service_name("café") == b"caf\xc3\xa9"
    assert p.service_name(b"\xff raw") == b"\xff raw"
    assert type(p.service_name(bytearray(b"echo"))) is bytes


def test_frames_are_read_as_bytes_whatever_carries_them():
    frame = zmq.Frame(b"\x01\x02")
    assert p.frame_bytes(frame) == p.frame_bytes(memoryview(b"\x01\x02")) == b"\x01\x02"
    same = b"kept"
    assert p.frame_bytes(same) is same  # bytes are not copied
