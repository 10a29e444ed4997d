"""What MDP messages look like on the wire, for every dialect this package speaks.

Pure code: frames in, typed messages out, and the reverse. Body frames are never
inspected or copied, so zmq.Frame objects pass straight through to the other side.

Three dialects share one broker socket, told apart by the first frames (see
protocol/mdp.md): MDP/0.2 (RFC 18), MDP/0.1 (RFC 7, a leading empty frame) and
majortomo's variant of 0.2 (a leading empty frame, client commands numbered like the
worker's, no service frame in replies to clients).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import MDPError

Frame = Any  # bytes, or a zmq.Frame / memoryview carried opaquely

CLIENT_V01 = b"MDPC01"
CLIENT_V02 = b"MDPC02"
WORKER_V01 = b"MDPW01"
WORKER_V02 = b"MDPW02"
EMPTY = b""
MMI_PREFIX = b"mmi."
MAX_SERVICE_NAME = 255  # bytes; the broker refuses longer names (protocol/mdp.md 1)
MAX_READY_METADATA = 4096  # bytes of a READY's metadata frame the broker reads (mdp.md 5.4)


class Dialect(enum.Enum):
    V02 = "MDP/0.2"
    V01 = "MDP/0.1"
    MAJORTOMO = "majortomo"


# Command bytes, by dialect and role.
C_REQUEST_V02 = b"\x01"
C_PARTIAL_V02 = b"\x02"
C_FINAL_V02 = b"\x03"
C_REQUEST_MT = b"\x02"
C_PARTIAL_MT = b"\x03"
C_FINAL_MT = b"\x04"

W_READY = b"\x01"  # same in every dialect
W_REQUEST = b"\x02"  # same in every dialect
W_PARTIAL_V02 = b"\x03"
W_FINAL_V02 = b"\x04"
W_HEARTBEAT_V02 = b"\x05"
W_DISCONNECT_V02 = b"\x06"
W_REPLY_V01 = b"\x03"
W_HEARTBEAT_V01 = b"\x04"
W_DISCONNECT_V01 = b"\x05"


class ProtocolError(MDPError, ValueError):
    """A message that no dialect of MDP allows."""


# ---------------------------------------------------------------- typed messages


@dataclass(frozen=True)
class ClientRequest:
    dialect: Dialect
    service: bytes
    body: list = field(default_factory=list)


@dataclass(frozen=True)
class ClientReply:
    """What a client receives: a PARTIAL (final=False) or FINAL/REPLY part."""

    service: bytes | None  # None in the majortomo dialect, which sends none
    body: list
    final: bool = True


@dataclass(frozen=True)
class Ready:
    dialect: Dialect
    service: bytes
    metadata: bytes = EMPTY  # the optional frame after the service (protocol/mdp.md 5.4)


@dataclass(frozen=True)
class WorkerReply:
    dialect: Dialect
    address: bytes
    body: list
    final: bool = True


@dataclass(frozen=True)
class Heartbeat:
    dialect: Dialect


@dataclass(frozen=True)
class Disconnect:
    dialect: Dialect


@dataclass(frozen=True)
class WorkerRequest:
    """What a worker receives for each request it must answer."""

    address: bytes
    body: list


FromPeer = ClientRequest | Ready | WorkerReply | Heartbeat | Disconnect
ToWorker = WorkerRequest | Heartbeat | Disconnect


def frame_bytes(frame: Frame) -> bytes:
    """A frame (bytes, zmq.Frame or memoryview) as bytes. For control frames: they are
    short, so reading them as bytes is cheap, and bodies stay opaque."""
    return frame if type(frame) is bytes else bytes(frame)


def service_name(name: str | bytes) -> bytes:
    """A service name as it goes on the wire: a str in UTF-8, bytes as they are."""
    return name.encode("utf-8") if isinstance(name, str) else bytes(name)


# ------------------------------------------------------- broker side: peer -> broker

# A message to the broker as a plain tuple: (kind, dialect, name, body, final), kind being
# the class parse_peer_message makes of it and name the service of a ClientRequest or a
# Ready, or the client address of a WorkerReply (else b""); a Ready's body is its
# metadata frame, if it has one. The broker reads every message
# in this form, as a tuple costs a fraction of a (frozen) dataclass.
PeerFields = tuple[type, Dialect, bytes, list, bool]


def parse_peer_message(frames: Sequence[Frame]) -> FromPeer:
    """Decode what a client or worker sent to the broker (routing identity removed)."""
    kind, dialect, name, body, final = read_peer_message(frames)
    if kind is ClientRequest:
        return ClientRequest(dialect, name, body)
    if kind is WorkerReply:
        return WorkerReply(dialect, name, body, final)
    if kind is Ready:
        return Ready(dialect, name, frame_bytes(body[0]) if body else EMPTY)
    return kind(dialect)  # Heartbeat or Disconnect


def read_peer_message(frames: Sequence[Frame]) -> PeerFields:
    """``parse_peer_message``'s answer as ``PeerFields``, for the broker's hot path."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames[0]):  # MDP/0.2: the header comes first
        header, after, headers = frame_bytes(frames[0]), 1, _HEADERS
    elif len(frames) < 2:
        raise ProtocolError("only an empty frame")
    else:  # MDP/0.1 and majortomo: an empty frame, then the header
        header, after, headers = frame_bytes(frames[1]), 2, _HEADERS_AFTER_EMPTY
    known = headers.get(header)
    if known is None:
        raise ProtocolError(f"unknown protocol header {header[:16]!r}")
    read, dialect, commands = known
    return read(dialect, commands, frames, after)


def _read_client(dialect: Dialect, request: bytes | None, frames: Sequence[Frame],
                 i: int) -> PeerFields:
    """A REQUEST from frame ``i`` on: its command (``request``; MDP/0.1 has none), service, body."""
    if request is None:
        if len(frames) <= i:
            raise ProtocolError("MDP/0.1 request without a service frame")
    else:
        if len(frames) < i + 2:
            raise ProtocolError(f"{dialect.value} client message is too short")
        command = frame_bytes(frames[i])
        if command != request:
            raise ProtocolError(f"{dialect.value} client command {command!r} is not REQUEST")
        i += 1
    return ClientRequest, dialect, _service(frames[i]), list(frames[i + 1:]), True


def _read_worker(dialect: Dialect, commands: dict, frames: Sequence[Frame],
                 i: int) -> PeerFields:
    """A worker's command from frame ``i`` on; ``commands`` maps its bytes to (kind, final)."""
    if len(frames) <= i:
        raise ProtocolError(f"{dialect.value} worker message without a command")
    command = frame_bytes(frames[i])
    kind, final = commands.get(command, (None, True))
    if kind is WorkerReply:
        if len(frames) < i + 3 or len(frames[i + 2]):
            raise ProtocolError("worker reply needs a client address and an empty frame")
        address = frame_bytes(frames[i + 1])
        return WorkerReply, dialect, address, list(frames[i + 3:]), final
    if kind is Ready:
        if len(frames) < i + 2:
            raise ProtocolError("READY without a service frame")
        return Ready, dialect, _service(frames[i + 1]), list(frames[i + 2:i + 3]), True
    if kind is None:
        raise ProtocolError(f"{dialect.value} worker command {command!r} is unknown")
    return kind, dialect, EMPTY, [], True  # Heartbeat or Disconnect


def _service(frame: Frame) -> bytes:
    service = frame_bytes(frame)
    if not service:
        raise ProtocolError("empty service name")
    return service


_HEARTBEAT = {Dialect.V02: W_HEARTBEAT_V02, Dialect.MAJORTOMO: W_HEARTBEAT_V02,
              Dialect.V01: W_HEARTBEAT_V01}
_DISCONNECT = {Dialect.V02: W_DISCONNECT_V02, Dialect.MAJORTOMO: W_DISCONNECT_V02,
               Dialect.V01: W_DISCONNECT_V01}
_WORKER_COMMANDS_V02 = {  # majortomo's too
    W_READY: (Ready, True), W_PARTIAL_V02: (WorkerReply, False),
    W_FINAL_V02: (WorkerReply, True), W_HEARTBEAT_V02: (Heartbeat, True),
    W_DISCONNECT_V02: (Disconnect, True),
}
_WORKER_COMMANDS_V01 = {
    W_READY: (Ready, True), W_REPLY_V01: (WorkerReply, True),
    W_HEARTBEAT_V01: (Heartbeat, True), W_DISCONNECT_V01: (Disconnect, True),
}
# header frame -> (reader, dialect, what the reader needs to know of the dialect's commands)
_HEADERS = {
    CLIENT_V02: (_read_client, Dialect.V02, C_REQUEST_V02),
    WORKER_V02: (_read_worker, Dialect.V02, _WORKER_COMMANDS_V02),
}
_HEADERS_AFTER_EMPTY = {
    CLIENT_V01: (_read_client, Dialect.V01, None),
    WORKER_V01: (_read_worker, Dialect.V01, _WORKER_COMMANDS_V01),
    CLIENT_V02: (_read_client, Dialect.MAJORTOMO, C_REQUEST_MT),
    WORKER_V02: (_read_worker, Dialect.MAJORTOMO, _WORKER_COMMANDS_V02),
}


# ------------------------------------------------------- broker side: broker -> peer


def to_worker_request(dialect: Dialect, address: bytes, body: list) -> list:
    if dialect is Dialect.V02:
        return [WORKER_V02, W_REQUEST, address, EMPTY, *body]
    header = WORKER_V01 if dialect is Dialect.V01 else WORKER_V02
    return [EMPTY, header, W_REQUEST, address, EMPTY, *body]


def to_worker_heartbeat(dialect: Dialect) -> list:
    return _worker_command(dialect, _HEARTBEAT[dialect])


def to_worker_disconnect(dialect: Dialect) -> list:
    return _worker_command(dialect, _DISCONNECT[dialect])


def _worker_command(dialect: Dialect, command: bytes) -> list:
    if dialect is Dialect.V02:
        return [WORKER_V02, command]
    header = WORKER_V01 if dialect is Dialect.V01 else WORKER_V02
    return [EMPTY, header, command]


def to_client_reply(dialect: Dialect, service: bytes, body: list, final: bool = True) -> list:
    """A reply part for a client. MDP/0.1 has no PARTIAL: callers must not ask for one."""
    if dialect is Dialect.V02:
        return [CLIENT_V02, C_FINAL_V02 if final else C_PARTIAL_V02, service, *body]
    if dialect is Dialect.V01:
        if not final:
            raise ValueError("MDP/0.1 clients cannot receive partial replies")
        return [EMPTY, CLIENT_V01, service, *body]
    return [EMPTY, CLIENT_V02, C_FINAL_MT if final else C_PARTIAL_MT, *body]


# ------------------------------------------------------- client and worker side


def client_request(dialect: Dialect, service: bytes, body: Sequence[Frame]) -> list:
    if dialect is Dialect.V02:
        return [CLIENT_V02, C_REQUEST_V02, service, *body]
    if dialect is Dialect.V01:
        return [EMPTY, CLIENT_V01, service, *body]
    return [EMPTY, CLIENT_V02, C_REQUEST_MT, service, *body]


def parse_client_reply(dialect: Dialect, frames: Sequence[Frame]) -> ClientReply:
    """Decode what a client received from its broker."""
    header = CLIENT_V01 if dialect is Dialect.V01 else CLIENT_V02
    rest = _after_header(dialect, header, frames)
    if dialect is Dialect.V01:
        if len(rest) < 2:
            raise ProtocolError("MDP/0.1 reply without a service frame")
        return ClientReply(frame_bytes(rest[1]), rest[2:], True)
    if len(rest) < 2:
        raise ProtocolError("reply without a command")
    codes = ({C_PARTIAL_V02: False, C_FINAL_V02: True} if dialect is Dialect.V02
             else {C_PARTIAL_MT: False, C_FINAL_MT: True})
    final = codes.get(frame_bytes(rest[1]))
    if final is None:
        raise ProtocolError(f"reply command {frame_bytes(rest[1])!r} is neither PARTIAL "
                            "nor FINAL")
    if dialect is Dialect.MAJORTOMO:
        return ClientReply(None, rest[2:], final)
    if len(rest) < 3:
        raise ProtocolError("reply without a service frame")
    return ClientReply(frame_bytes(rest[2]), rest[3:], final)


def _after_header(dialect: Dialect, header: bytes, frames: Sequence[Frame]) -> list:
    """The frames from the header on, once the leading empty frame (not in 0.2) is checked."""
    rest = list(frames)
    if dialect is not Dialect.V02:
        if not rest or frame_bytes(rest[0]) != EMPTY:
            raise ProtocolError(f"{dialect.value} message must start with an empty frame")
        rest = rest[1:]
    if not rest or frame_bytes(rest[0]) != header:
        raise ProtocolError(f"message header is not {header!r}")
    return rest


def worker_ready(dialect: Dialect, service: bytes, metadata: bytes = EMPTY) -> list:
    """READY, with the optional metadata frame (a JSON object) when there is one."""
    return _worker_command(dialect, W_READY) + ([service, metadata] if metadata else [service])


def worker_reply(dialect: Dialect, address: bytes, body: Sequence[Frame], final: bool) -> list:
    if dialect is Dialect.V01:
        if not final:
            raise ValueError("MDP/0.1 workers cannot send partial replies")
        command = W_REPLY_V01
    else:
        command = W_FINAL_V02 if final else W_PARTIAL_V02
    return _worker_command(dialect, command) + [address, EMPTY, *body]


def worker_heartbeat(dialect: Dialect) -> list:
    return to_worker_heartbeat(dialect)


def worker_disconnect(dialect: Dialect) -> list:
    return to_worker_disconnect(dialect)


def parse_worker_message(dialect: Dialect, frames: Sequence[Frame]) -> ToWorker:
    """Decode what a worker received from its broker."""
    header = WORKER_V01 if dialect is Dialect.V01 else WORKER_V02
    rest = _after_header(dialect, header, frames)
    if len(rest) < 2:
        raise ProtocolError("worker message without a command")
    command = frame_bytes(rest[1])
    if command == W_REQUEST:
        if len(rest) < 4 or frame_bytes(rest[3]) != EMPTY:
            raise ProtocolError("REQUEST needs a client address and an empty frame")
        return WorkerRequest(frame_bytes(rest[2]), rest[4:])
    if command == _HEARTBEAT[dialect]:
        return Heartbeat(dialect)
    if command == _DISCONNECT[dialect]:
        return Disconnect(dialect)
    raise ProtocolError(f"worker command {command!r} is unknown")
