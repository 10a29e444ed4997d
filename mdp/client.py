"""The blocking Majordomo client.

One request at a time per connection, as MDP wants. When no reply comes in time the
client closes its socket, opens a new one and sends again (the RFC's way to survive a
broker restart), up to ``retries`` times, then raises ``RequestTimeout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import zmq

from . import protocol as p
from .errors import (
    RequestTimeout,
    decode_broker_error,
    decode_worker_error,
    is_worker_error,
)
from .security import KeyPath, client_curve


def encode_service(service: str | bytes) -> bytes:
    return service.encode() if isinstance(service, str) else service


def encode_body(frames: Sequence[Any]) -> list:
    return [f.encode() if isinstance(f, str) else f for f in frames]


def check_reply(reply: p.ClientReply, service: bytes) -> list:
    """The reply's body, or the typed exception it carries."""
    body = reply.body
    if reply.service == p.MMI_ERROR:
        raise decode_broker_error(body)
    if reply.service is None and body and bytes(body[0]) == p.MMI_ERROR:
        raise decode_broker_error(body[1:])  # majortomo dialect: no service frame
    if is_worker_error(body):
        raise decode_worker_error(body, service.decode("utf-8", "replace"))
    return body


class Client:
    """Send requests to services through the broker at ``endpoint``.

    ``timeout`` is how long one attempt waits for the (next part of the) reply;
    ``retries`` is how many times it is sent again after that on a fresh socket.
    ``curve_server_key`` (the broker's NAME.key) encrypts the connection with CURVE, using
    the key pair in ``curve_secret_key`` (NAME.key_secret) or else an ephemeral one.
    """

    def __init__(self, endpoint: str, *, timeout: float = 60.0, retries: int = 2,
                 dialect: p.Dialect = p.Dialect.V02, copy: bool = True,
                 context: zmq.Context | None = None, curve_server_key: KeyPath | None = None,
                 curve_secret_key: KeyPath | None = None):
        self.endpoint = endpoint
        self.curve = client_curve(curve_server_key, curve_secret_key)
        self.timeout = timeout
        self.retries = retries
        self.dialect = dialect
        self.copy = copy
        self.context = context or zmq.Context.instance()
        self._socket: zmq.Socket | None = None

    def request(self, service: str | bytes, *frames: Any, timeout: float | None = None,
                retries: int | None = None) -> list:
        """Send one request and return the reply's frames (streamed parts joined)."""
        body: list = []
        for part in self.stream(service, *frames, timeout=timeout, retries=retries):
            body.extend(part)
        return body

    def stream(self, service: str | bytes, *frames: Any, timeout: float | None = None,
               retries: int | None = None) -> Iterator[list]:
        """Send one request and yield each reply part as it arrives, the FINAL last.

        Once a part has arrived the request is not sent again: a retry would run the
        work a second time and send its parts twice.
        """
        service = encode_service(service)
        message = p.client_request(self.dialect, service, encode_body(frames))
        timeout = self.timeout if timeout is None else timeout
        attempts = 1 + (self.retries if retries is None else retries)
        finished = False
        try:
            reply = self._first_reply(service, message, timeout, attempts)
            while True:
                finished = reply.final
                yield check_reply(reply, service)
                if finished:
                    return
                reply = self._receive(timeout)
                if reply is None:
                    raise RequestTimeout(
                        f"'{service.decode()}' stopped sending parts of its reply: none "
                        f"came for {timeout:g} s")
        finally:
            if not finished:
                self._reset()  # parts of an abandoned reply must not reach the next request

    def _first_reply(self, service: bytes, message: list, timeout: float,
                     attempts: int) -> p.ClientReply:
        for _ in range(attempts):
            self._socket_or_new().send_multipart(message, copy=False)
            reply = self._receive(timeout)
            if reply is not None:
                return reply
            self._reset()
        raise RequestTimeout(
            f"no reply from '{service.decode()}' via {self.endpoint} after {attempts} "
            f"attempt(s) of {timeout:g} s each; is a broker running there and a worker "
            f"serving '{service.decode()}'?")

    def _receive(self, timeout: float) -> p.ClientReply | None:
        sock = self._socket
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(remaining * 1000):
                return None
            frames = sock.recv_multipart(copy=self.copy)
            try:
                return p.parse_client_reply(self.dialect, frames)
            except p.ProtocolError:
                continue  # not ours to act on; keep waiting for the real reply

    def _socket_or_new(self) -> zmq.Socket:
        if self._socket is None:
            self._socket = self.context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                self.curve.apply(self._socket)
            self._socket.connect(self.endpoint)
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
