"""The blocking Majordomo client.

One request at a time per connection, as MDP wants. When no reply comes in time the
client closes its socket, opens a new one and sends again (the RFC's way to survive a
broker restart), up to ``retries`` times, then raises ``RequestTimeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import zmq

from . import protocol as p
from .errors import (
    BROKER_ERROR_MARKER,
    WORKER_ERROR_MARKER,
    RequestTimeout,
    decode_broker_error,
    decode_worker_error,
    reserved_marker,
)
from .security import KeyPath, client_curve

WAITING_EVERY = 10.0  # seconds between calls of a request's ``waiting`` callback
Waiting = Callable[[float], None]


def encode_service(service: str | bytes) -> bytes:
    return service.encode() if isinstance(service, str) else service


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


class ClientBase:
    """What the blocking and the asyncio client share: settings, framing, error texts.

    ``timeout`` is how long one attempt waits for the (next part of the) reply;
    ``retries`` is how many times it is sent again after that on a fresh socket.
    ``curve_server_key`` (the broker's NAME.key) encrypts the connection with CURVE, using
    the key pair in ``curve_secret_key`` (NAME.key_secret) or else an ephemeral one.
    """

    def __init__(self, endpoint: str, *, timeout: float = 60.0, retries: int = 2,
                 dialect: p.Dialect = p.Dialect.V02, copy: bool = True,
                 curve_server_key: KeyPath | None = None,
                 curve_secret_key: KeyPath | None = None):
        self.endpoint = endpoint
        self.curve = client_curve(curve_server_key, curve_secret_key)
        self.timeout = timeout
        self.retries = retries
        self.dialect = dialect
        self.copy = copy

    def _prepare(self, service: str | bytes, frames: Sequence[Any], timeout: float | None,
                 retries: int | None) -> tuple[bytes, list, float, int]:
        """The service name, the message, the timeout and how many attempts to make."""
        service = encode_service(service)
        message = p.client_request(self.dialect, service, encode_body(frames))
        timeout = self.timeout if timeout is None else timeout
        return service, message, timeout, 1 + (self.retries if retries is None else retries)

    def _connect(self, context: zmq.Context) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.endpoint)
        return sock

    def _parse(self, frames: list) -> p.ClientReply | None:
        """The reply, or None for a message that is not ours to act on."""
        try:
            return p.parse_client_reply(self.dialect, frames)
        except p.ProtocolError:
            return None

    def _no_reply(self, service: bytes, attempts: int, timeout: float) -> RequestTimeout:
        return RequestTimeout(
            f"no reply from '{service.decode()}' via {self.endpoint} after {attempts} "
            f"attempt(s) of {timeout:g} s each; is a broker running there and a worker "
            f"serving '{service.decode()}'?")

    @staticmethod
    def _stalled(service: bytes, timeout: float) -> RequestTimeout:
        return RequestTimeout(f"'{service.decode()}' stopped sending parts of its reply: "
                              f"none came for {timeout:g} s")


class Client(ClientBase):
    """Send requests to services through the broker at ``endpoint``, one at a time."""

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None, **settings: Any):
        super().__init__(endpoint, **settings)
        self.context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None

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

        Once a part has arrived the request is not sent again: a retry would run the
        work a second time and send its parts twice. ``waiting(seconds)`` is called every
        ``WAITING_EVERY`` seconds while no reply has come, so a caller can say why.
        """
        service, message, timeout, attempts = self._prepare(service, frames, timeout, retries)
        finished = False
        try:
            reply = self._first_reply(service, message, timeout, attempts, waiting)
            while True:
                finished = reply.final
                yield check_reply(reply, service)
                if finished:
                    return
                reply = self._receive(timeout)
                if reply is None:
                    raise self._stalled(service, timeout)
        finally:
            if not finished:
                self._reset()  # parts of an abandoned reply must not reach the next request

    def _first_reply(self, service: bytes, message: list, timeout: float, attempts: int,
                     waiting: Waiting | None) -> p.ClientReply:
        for _ in range(attempts):
            self._socket_or_new().send_multipart(message, copy=False)
            reply = self._receive(timeout, waiting)
            if reply is not None:
                return reply
            self._reset()
        raise self._no_reply(service, attempts, timeout)

    def _receive(self, timeout: float, waiting: Waiting | None = None) -> p.ClientReply | None:
        sock = self._socket
        start = time.monotonic()
        while True:
            remaining = start + timeout - time.monotonic()
            if remaining <= 0:
                return None
            if sock.poll(min(remaining, WAITING_EVERY) * 1000):
                reply = self._parse(sock.recv_multipart(copy=self.copy))
                if reply is not None:
                    return reply
            elif waiting is not None and remaining > WAITING_EVERY:
                waiting(time.monotonic() - start)

    def _socket_or_new(self) -> zmq.Socket:
        if self._socket is None:
            self._socket = self._connect(self.context)
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
