"""The blocking Majordomo client, and what it shares with the asyncio one.

One request at a time per connection, as MDP wants. Each connection is a ``Link``: a
DEALER socket and a monitor of it, so the client knows whether a broker is there at all
(``BrokerUnavailable`` within ``broker_timeout`` if not) and when a connection that
carried a request closed. That is the one time a request is sent again (on a fresh
connection, up to ``retries`` times): the broker was lost or restarted and the request
with it. A reply that is merely slow is waited for, never duplicated; a client that gives
up closes its connection, and the broker then forgets the request (protocol/mdp.md 10).
No call waits past its deadlines, the send included: a DEALER whose connection was refused
(libzmq drops a connection whose handshake failed on its own side for good) would block
a plain send for ever.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import protocol as p
from .errors import (
    BROKER_ERROR_MARKER,
    WORKER_ERROR_MARKER,
    BrokerUnavailable,
    RequestTimeout,
    decode_broker_error,
    decode_worker_error,
    reserved_marker,
)
from .frames import recv_frames, send_frames
from .identities import connection_identity
from .security import ClientCurve, KeyPath, client_curve

WAITING_EVERY = 10.0  # seconds between calls of a request's ``waiting`` callback
BROKER_TIMEOUT = 10.0  # seconds a client waits for a broker to take its connection
Waiting = Callable[[float], None]
Deadlines = tuple[float, float]  # (give up on the reply, give up on a broker)

_MISMATCH = "the handshake failed (CURVE on one side only, or the wrong server key?)"
_REFUSALS = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: _MISMATCH,
             zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: _MISMATCH,
             zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication was refused (CURVE keys?)"}
_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
for _event in _REFUSALS:
    _EVENTS |= _event


def encode_body(frames: Sequence[Any]) -> list:
    return [f.encode() if isinstance(f, str) else f for f in frames]


def check_reply(reply: p.ClientReply, service: bytes) -> list:
    """The reply's body, or the typed exception it carries."""
    marker = reserved_marker(reply.body)
    if marker == BROKER_ERROR_MARKER:
        raise decode_broker_error(reply.body, service.decode("utf-8", "replace"))
    if marker == WORKER_ERROR_MARKER:
        raise decode_worker_error(reply.body, service.decode("utf-8", "replace"))
    return reply.body


def ms_until(moment: float) -> int:
    """Milliseconds to ``moment`` for poll, rounded up so that it does not wake early."""
    return max(0, math.ceil((moment - time.monotonic()) * 1000))


class Link:
    """A DEALER connection to the broker, and what its monitor has said about it.

    Its routing identity names this process's client (mdp/identities.py), so that the
    broker gives the process one turn however many connections it holds. ``up`` while a
    broker has completed the handshake; ``drops`` counts the times the
    connection closed after that; ``refused`` says why a handshake failed, if one did.
    The owner reads the monitor socket and hands each message to ``note``.
    """

    def __init__(self, context: zmq.Context, endpoint: str, curve: Any):
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTING_ID, connection_identity())
        if curve is not None:
            curve.apply(self.socket)
        self.monitor = self.socket.get_monitor_socket(_EVENTS)
        self.socket.connect(endpoint)
        self.poller = zmq.Poller()  # both, for a reply or news of the connection
        self.poller.register(self.socket, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.up = False
        self.drops = 0
        self.refused = ""

    def note(self, frames: list) -> None:
        event = parse_monitor_message(frames)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.up, self.refused = True, ""
        elif event == zmq.EVENT_DISCONNECTED:
            if self.up:
                self.up = False
                self.drops += 1
        else:
            self.refused = _REFUSALS.get(event, f"monitor event {event}")

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


class Wait(enum.Enum):
    """Why waiting for a reply ended without one."""

    TIMEOUT = "timeout"
    NO_BROKER = "no broker"
    LOST = "lost"


class ClientBase:
    """What the blocking and the asyncio client share: settings, framing, error texts.

    ``timeout`` is how long to wait for the (next part of the) reply; ``broker_timeout``
    how long to wait for a broker to accept the connection; ``retries`` how many times a
    request is sent again because the connection that carried it closed (the broker was
    lost). ``curve_server_key`` (the broker's NAME.key) encrypts the connection with CURVE,
    using the key pair in ``curve_secret_key`` (NAME.key_secret) or else an ephemeral one;
    ``curve`` (a ``ClientCurve``) does the same with the keys in memory.
    """

    def __init__(self, endpoint: str, *, timeout: float = 60.0, retries: int = 2,
                 broker_timeout: float = BROKER_TIMEOUT, dialect: p.Dialect = p.Dialect.V02,
                 copy: bool = True, curve: ClientCurve | None = None,
                 curve_server_key: KeyPath | None = None,
                 curve_secret_key: KeyPath | None = None):
        self.endpoint = endpoint
        self.curve = client_curve(curve_server_key, curve_secret_key, curve=curve)
        self.timeout = timeout
        self.retries = retries
        self.broker_timeout = broker_timeout
        self.dialect = dialect
        self.copy = copy

    def _prepare(self, service: str | bytes, frames: Sequence[Any], timeout: float | None,
                 retries: int | None) -> tuple[bytes, list, float, int]:
        """The service name, the message, the timeout and how many times to send it."""
        service = p.service_name(service)
        message = p.client_request(self.dialect, service, encode_body(frames))
        timeout = self.timeout if timeout is None else timeout
        return service, message, timeout, 1 + (self.retries if retries is None else retries)

    def _deadlines(self, timeout: float) -> Deadlines:
        """(give up on the reply, give up on a broker) for a wait that starts now."""
        now = time.monotonic()
        return now + timeout, now + min(timeout, self.broker_timeout)

    @staticmethod
    def _send_within(link: Link, connect_by: float) -> None:
        """Let the next send wait for a connection to take it until ``connect_by`` at most
        (pyzmq's asyncio sockets honour it too); then it raises ``zmq.Again``."""
        link.socket.setsockopt(zmq.SNDTIMEO, ms_until(connect_by))

    @staticmethod
    def _until(link: Link, deadline: float, connect_by: float) -> float:
        """When waiting on ``link`` must be looked at again, if nothing comes."""
        return deadline if link.up else connect_by

    @staticmethod
    def _over(link: Link, deadline: float, connect_by: float) -> Wait | None:
        now = time.monotonic()
        if not link.up and now >= connect_by:
            return Wait.NO_BROKER
        return Wait.TIMEOUT if now >= deadline else None

    def _parse(self, frames: list) -> p.ClientReply | None:
        """The reply, or None for a message that is not ours to act on."""
        try:
            return p.parse_client_reply(self.dialect, frames)
        except p.ProtocolError:
            return None

    def _failure(self, why: Wait, service: bytes, link: Link, timeout: float, sends: int,
                 streaming: bool = False) -> RequestTimeout:
        name = service.decode("utf-8", "replace")
        if why is Wait.NO_BROKER:
            wait = min(timeout, self.broker_timeout)
            if link.refused:
                return BrokerUnavailable(f"the broker at {self.endpoint} refused the "
                                         f"connection: {link.refused}", refused=True)
            cause = f"no broker answers at {self.endpoint} (no connection within {wait:g} s)"
            return BrokerUnavailable(f"{cause}; start one, e.g. `mdp broker --bind "
                                     f"{self.endpoint}`", cause=cause)
        if why is Wait.LOST:
            what = "while it streamed the reply of" if streaming else \
                f"{sends} time(s), each time holding the request to"
            return BrokerUnavailable(f"the connection to the broker at {self.endpoint} "
                                     f"closed {what} '{name}'")
        if streaming:
            return RequestTimeout(f"'{name}' stopped sending parts of its reply: none came "
                                  f"for {timeout:g} s")
        cause = f"no reply from '{name}' via {self.endpoint} within {timeout:g} s"
        return RequestTimeout(f"{cause}; the broker is there, is a worker serving '{name}'? "
                              f"(`mdp status --broker {self.endpoint}` shows)", cause=cause)


class Client(ClientBase):
    """Send requests to services through the broker at ``endpoint``, one at a time."""

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None, **settings: Any):
        super().__init__(endpoint, **settings)
        self.context = context or zmq.Context.instance()
        self._link: Link | None = None

    def request(self, service: str | bytes, *frames: Any, timeout: float | None = None,
                retries: int | None = None, waiting: Waiting | None = None) -> list:
        """Send one request and return the reply's frames (streamed parts joined)."""
        body: list = []
        for part in self.stream(service, *frames, timeout=timeout, retries=retries,
                                waiting=waiting):
            body.extend(part)
        return body

    def stream(self, service: str | bytes, *frames: Any, timeout: float | None = None,
               retries: int | None = None, waiting: Waiting | None = None) -> Iterator[list]:
        """Send one request and yield each reply part as it arrives, the FINAL last.

        Once a part has arrived the request is not sent again: that would run the work a
        second time and send its parts twice. ``waiting(seconds)`` is called every
        ``WAITING_EVERY`` seconds while no reply has come, so a caller can say why.
        """
        service, message, timeout, sends = self._prepare(service, frames, timeout, retries)
        finished = False
        try:
            reply = self._first_reply(service, message, timeout, sends, waiting)
            while True:
                finished = reply.final
                yield check_reply(reply, service)
                if finished:
                    return
                reply = self._wait(self._link, self._deadlines(timeout))
                if isinstance(reply, Wait):
                    raise self._failure(reply, service, self._link, timeout, 1, True)
        finally:
            if not finished:
                self._reset()  # parts of an abandoned reply must not reach the next request

    def _first_reply(self, service: bytes, message: list, timeout: float, sends: int,
                     waiting: Waiting | None) -> p.ClientReply:
        for _ in range(sends):
            link = self._link_or_new()
            self._read_monitor(link)  # what happened while it was idle is no news
            deadlines = self._deadlines(timeout)
            if not self._send(link, message, deadlines[1]):
                raise self._failure(Wait.NO_BROKER, service, link, timeout, sends)
            reply = self._wait(link, deadlines, waiting)
            if not isinstance(reply, Wait):
                return reply
            if reply is not Wait.LOST:
                raise self._failure(reply, service, link, timeout, sends)
            self._reset()  # a fresh connection: the old one may still hold the message
        raise self._failure(Wait.LOST, service, link, timeout, sends)

    def _send(self, link: Link, message: list, connect_by: float) -> bool:
        """Send ``message``; False if no connection took it by ``connect_by``."""
        self._send_within(link, connect_by)
        try:
            send_frames(link.socket, message, copy=False)
        except zmq.Again:
            self._read_monitor(link)  # a refusal says why
            return False
        return True

    def _wait(self, link: Link, deadlines: Deadlines,
              waiting: Waiting | None = None) -> p.ClientReply | Wait:
        """The next reply on ``link``, or why none will come."""
        deadline, connect_by = deadlines
        start, drops = time.monotonic(), link.drops
        next_call = start + WAITING_EVERY if waiting is not None else float("inf")
        while True:
            until = min(self._until(link, deadline, connect_by), next_call)
            ready = dict(link.poller.poll(ms_until(until)))
            if link.socket in ready:
                reply = self._parse(recv_frames(link.socket, copy=self.copy))
                if reply is not None:
                    return reply
            if link.monitor in ready:
                self._read_monitor(link)
            if link.drops > drops and not link.socket.poll(0):
                return Wait.LOST  # (a reply sent before the drop is read first)
            over = self._over(link, deadline, connect_by)
            if over is not None:
                return over
            if time.monotonic() >= next_call:
                waiting(time.monotonic() - start)
                next_call += WAITING_EVERY

    @staticmethod
    def _read_monitor(link: Link) -> None:
        while link.monitor.poll(0):
            link.note(link.monitor.recv_multipart())

    def _link_or_new(self) -> Link:
        if self._link is None:
            self._link = Link(self.context, self.endpoint, self.curve)
        return self._link

    def _reset(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ask(endpoint: str, service: str | bytes, *frames: Any, timeout: float = 10.0,
        broker_timeout: float | None = None, context: zmq.Context | None = None,
        curve: ClientCurve | None = None, curve_server_key: KeyPath | None = None,
        curve_secret_key: KeyPath | None = None) -> list[bytes]:
    """One request, sent once on a connection of its own that is closed afterwards; the
    reply's frames. For a probe such as ``mmi.service``, where sending it again would only
    put off the answer. Raises what ``Client.request`` raises.

    ``broker_timeout`` None is the client's default (BROKER_TIMEOUT); either way, no
    longer than ``timeout``.
    """
    with Client(endpoint, timeout=timeout, retries=0, context=context, curve=curve,
                broker_timeout=BROKER_TIMEOUT if broker_timeout is None else broker_timeout,
                curve_server_key=curve_server_key, curve_secret_key=curve_secret_key) as client:
        return client.request(service, *frames)
