"""A Majordomo worker: serves one service with a handler function.

The handler runs in the thread that calls ``run``, the socket's thread, so a reply goes
out the moment it is ready, with no hand-off between threads. While it runs, a second
thread ("pulse") sends the HEARTBEATs, so that the broker hears from the worker during
a calculation of minutes. The two never use the socket at once: the pulse touches it
only while a handler runs and only under ``_socket_lock``, which the socket's thread also
holds to send a reply (libzmq lets a socket change threads behind such a memory barrier).
The pulse wakes on a clock of its own, never on a request's account: a request costs the
socket's thread two uncontended lock acquisitions (waking the pulse for each cost 45 us
of CPU here).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import zmq

from . import protocol as p
from .errors import reserved_marker, worker_error_body
from .frames import recv_frames, send_frames
from .security import ClientCurve, KeyPath, client_curve
from .signals import stop_on_signals
from .wakeup import Wakeup

log = logging.getLogger("mdp.worker")

Handler = Callable[[list], Any]
OnRegistration = Callable[[bool], None]
_CONNECTIONS = itertools.count(1)  # numbers every worker connection this process makes
TRACEBACK_LIMIT = 16_000  # characters of a handler's traceback sent with its error


def as_frames(result: Any) -> list:
    """What a handler may return: bytes-like or str (one frame), or a list/tuple of them."""
    if result is None:
        return []
    if isinstance(result, str):
        return [result.encode()]
    if isinstance(result, (bytes, bytearray, memoryview, zmq.Frame)):
        return [result]
    if isinstance(result, (list, tuple)):
        return [f.encode() if isinstance(f, str) else f for f in result]
    raise TypeError(f"a handler must return bytes, str or a list of them, not "
                    f"{type(result).__name__}")


class Worker:
    """Serve ``service`` at the broker at ``endpoint`` by calling ``handler(frames)``.

    A generator handler streams: each item it yields goes out as a PARTIAL, the last one
    as the FINAL. A handler that raises sends the client an error naming the exception
    and the worker goes on. With ``idle_timeout`` the worker leaves after that many
    seconds without a request, whether or not it found a broker meanwhile.
    ``curve_server_key`` (the broker's NAME.key) makes the connection CURVE-encrypted,
    with the key pair in ``curve_secret_key`` (NAME.key_secret) or, without it, a fresh
    one that only a broker admitting any key lets in; ``curve`` (a ``ClientCurve``) does
    the same with the keys in memory. ``metadata`` (a small JSON object,
    e.g. the host and the device) goes to the broker with READY, which shows it in
    ``mmi.status`` (protocol/mdp.md 5.4). ``on_registration(True)`` is called, in the
    worker's thread, when a broker first answers a READY (MDP has no acknowledgement: its
    first heartbeat or request says it registered the worker), ``(False)`` when that broker
    is lost; ``stop_reason`` says why ``run`` returned.
    """

    def __init__(self, endpoint: str, service: str | bytes, handler: Handler, *,
                 heartbeat_interval: float = 2.5, heartbeat_liveness: int = 3,
                 idle_timeout: float | None = None, reconnect_max: float = 5.0,
                 dialect: p.Dialect = p.Dialect.V02, copy: bool = True,
                 context: zmq.Context | None = None, curve: ClientCurve | None = None,
                 curve_server_key: KeyPath | None = None,
                 curve_secret_key: KeyPath | None = None,
                 metadata: Mapping[str, Any] | None = None,
                 on_registration: OnRegistration | None = None):
        self.endpoint = endpoint
        self.metadata = _metadata_frame(metadata)
        self.curve = client_curve(curve_server_key, curve_secret_key, curve=curve)
        self.service = p.service_name(service)
        if self.service.startswith(p.MMI_PREFIX):
            raise ValueError("service names starting with 'mmi.' are reserved for the broker")
        if not 0 < len(self.service) <= p.MAX_SERVICE_NAME:
            raise ValueError(f"a service name is 1 to {p.MAX_SERVICE_NAME} bytes long, not "
                             f"{len(self.service)}")
        self.handler = handler
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.idle_timeout = idle_timeout
        self.reconnect_max = reconnect_max
        self.dialect = dialect
        self.copy = copy
        self.context = context or zmq.Context.instance()
        self.served = 0
        self.connected = threading.Event()  # set while connected (READY sent)
        self.registered = threading.Event()  # set while a broker has answered the READY
        self.on_registration = on_registration
        self.stop_reason = ""
        self._socket: zmq.Socket | None = None
        self._stopping = False
        self._heard_from_broker = False  # in this session; resets the reconnect back-off
        self._idle_since = time.monotonic()  # since the last request was done, across sessions
        self.identity = ""
        self._wakeup = Wakeup()
        self._thread: threading.Thread | None = None
        # While a handler runs, the pulse thread may send on the socket, under this lock.
        self._socket_lock = threading.Lock()
        self._handling = False
        self._closed = threading.Event()
        self._pulse = threading.Thread(target=self._beat_while_handling, daemon=True,
                                       name="mdp-pulse")

    # ------------------------------------------------------------ control

    def stop(self, reason: str = "asked to stop") -> None:
        """Finish the request in hand, send DISCONNECT and return from ``run``."""
        log.info("stopping (%s): finishing the request in hand, if any, then leaving", reason)
        self.stop_reason = self.stop_reason or reason
        self._stopping = True
        self._wakeup.wake()

    def start(self) -> threading.Thread:
        """Run in a daemon thread (for tests and embedding)."""
        self._thread = threading.Thread(target=self.run, name="mdp-worker", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        """Serve until ``stop()``, SIGINT or SIGTERM (in the main thread), or the idle
        timeout."""
        self._pulse.start()
        try:
            with stop_on_signals(self.stop):
                self._serve()
        finally:
            self._close()

    def _serve(self) -> None:
        backoff = 0.1
        self._idle_since = time.monotonic()
        while not self._stopping and not self._idle_too_long():
            self._connect()
            outcome = self._session()
            if self.registered.is_set():
                self.registered.clear()
                if outcome != "stop" and self.on_registration is not None:
                    self.on_registration(False)
            if outcome == "stop":
                break
            log.info("lost the broker at %s (%s); reconnecting in %.1f s",
                     self.endpoint, outcome, backoff)
            self._disconnect_socket()
            self._sleep(min(backoff, max(0.0, self._idle_deadline() - time.monotonic())))
            backoff = 0.1 if self._heard_from_broker else min(backoff * 2, self.reconnect_max)

    def _idle_deadline(self) -> float:
        """When the worker leaves if no request comes; idle means no request served,
        whatever its connection did meanwhile (a broker that is gone keeps it idle)."""
        if self.idle_timeout is None:
            return float("inf")
        return self._idle_since + self.idle_timeout

    def _idle_too_long(self) -> bool:
        """Past the idle deadline: then the worker stops."""
        if time.monotonic() >= self._idle_deadline():
            log.info("no request for %.0f s; leaving", self.idle_timeout)
            self.stop_reason = self.stop_reason or f"no request for {self.idle_timeout:g} s"
            self._stopping = True
        return self._stopping

    def _session(self) -> str:
        """Serve on one connection; returns why it ended."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wakeup.fileno(), zmq.POLLIN)
        now = time.monotonic()
        broker_expires = now + self.heartbeat_interval * self.heartbeat_liveness
        next_heartbeat = now + self.heartbeat_interval
        self._heard_from_broker = False
        while True:
            if self._stopping:
                self._send(p.worker_disconnect(self.dialect))
                return "stop"
            now = time.monotonic()
            deadline = min(next_heartbeat, broker_expires, self._idle_deadline())
            for sock, _ in poller.poll(max(0.0, deadline - now) * 1000):
                if sock == self._wakeup.fileno():
                    self._wakeup.drain()
                    continue
                frames = recv_frames(self._socket, copy=self.copy)
                self._heard_from_broker = True
                broker_expires = time.monotonic() + \
                    self.heartbeat_interval * self.heartbeat_liveness
                try:
                    message = p.parse_worker_message(self.dialect, frames)
                except p.ProtocolError as error:
                    log.warning("ignored a malformed message from the broker: %s", error)
                    continue
                if isinstance(message, p.Disconnect):
                    return "the broker sent DISCONNECT"
                if not self.registered.is_set():
                    self._note_registered()
                if isinstance(message, p.Heartbeat):
                    # Answer at once, so a broker that expects beats more often than we
                    # send them still hears from us in time.
                    next_heartbeat = time.monotonic()
                if isinstance(message, p.WorkerRequest):
                    self._handle(message)
                    # Broker messages waited in the socket meanwhile: none were missed.
                    broker_expires = max(broker_expires, time.monotonic() +
                                         self.heartbeat_interval * self.heartbeat_liveness)
            now = time.monotonic()
            if now >= broker_expires:
                return "no heartbeat from the broker"
            if now >= next_heartbeat:
                self._send(p.worker_heartbeat(self.dialect))
                next_heartbeat = now + self.heartbeat_interval
            self._idle_too_long()

    def _note_registered(self) -> None:
        self.registered.set()
        if self.on_registration is not None:
            self.on_registration(True)

    # ------------------------------------------------------------ requests

    def _handle(self, request: p.WorkerRequest) -> None:
        """Run the handler here and send what it gives; the pulse beats meanwhile."""
        with self._socket_lock:
            self._handling = True
        try:
            for body, final in self._replies(request):
                if not final and self.dialect is p.Dialect.V01:
                    log.warning("MDP/0.1 has no PARTIAL; a streamed part was not sent")
                    continue
                with self._socket_lock:
                    self._send(p.worker_reply(self.dialect, request.address, body, final))
        finally:
            with self._socket_lock:
                self._handling = False
        self.served += 1
        self._idle_since = time.monotonic()

    def _replies(self, request: p.WorkerRequest) -> Iterator[tuple[list, bool]]:
        """(body, final) for each part of the reply: one FINAL, after PARTIALs for a
        generator handler; what the handler raises becomes a worker error."""
        try:
            result = self.handler(request.body)
            if not inspect.isgenerator(result):
                yield _checked(as_frames(result)), True
                return
            previous = None
            for part in result:
                if previous is not None:
                    yield previous, False
                previous = _checked(as_frames(part))
            yield previous or [], True
        except Exception as error:
            log.warning("handler raised %s: %s", type(error).__name__, error)
            trace = traceback.format_exc()
            log.debug("%s", trace)
            yield worker_error_body(type(error).__name__, str(error), trace[-TRACEBACK_LIMIT:],
                                    self.identity), True

    def _beat_while_handling(self) -> None:
        """The pulse thread: while a handler runs, a HEARTBEAT every half interval, so the
        broker hears from the worker at least every 1.5 intervals (it waits ``liveness``)."""
        while not self._closed.wait(self.heartbeat_interval / 2):
            with self._socket_lock:
                if self._handling and not self._closed.is_set():
                    self._send(p.worker_heartbeat(self.dialect))

    # ------------------------------------------------------------ socket

    def _connect(self) -> None:
        self._socket = self.context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 1000)
        # A readable identity lets `mdp status` name the process behind each worker.
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{next(_CONNECTIONS)}"
        self._socket.setsockopt(zmq.IDENTITY, self.identity.encode()[-255:])
        if self.curve is not None:
            self.curve.apply(self._socket)
        self._socket.connect(self.endpoint)
        self._send(p.worker_ready(self.dialect, self.service, self.metadata))
        self.connected.set()
        log.info("worker for '%s' connecting to %s (READY sent; registered once the broker "
                 "answers)", self.service.decode(), self.endpoint)

    def _disconnect_socket(self) -> None:
        self.connected.clear()
        if self._socket is not None:
            # Our READY may still reach a broker that comes up late; a DISCONNECT right
            # behind it on the same pipe cancels it instead of leaving a ghost worker.
            try:
                self._socket.send_multipart(p.worker_disconnect(self.dialect), zmq.NOBLOCK)
            except zmq.Again:
                pass
            self._socket.close(linger=100)
            self._socket = None

    def _send(self, frames: list) -> None:
        try:
            send_frames(self._socket, frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # No way to the broker: libzmq drops a connection whose handshake was refused
            # (e.g. by CURVE authentication) for good, and a blocking send would then hang
            # the worker. The silence that follows ends the session; it reconnects.
            log.warning("cannot send to the broker at %s (refused or stalled); message "
                        "dropped", self.endpoint)

    def _close(self) -> None:
        self.connected.clear()
        self.registered.clear()
        with self._socket_lock:
            self._closed.set()
        if self._socket is not None:
            self._socket.close(linger=1000)
            self._socket = None
        self._wakeup.close()

    def _sleep(self, seconds: float) -> None:
        """A back-off that ``stop()`` cuts short."""
        zmq.select([self._wakeup.fileno()], [], [], seconds)
        self._wakeup.drain()


def _metadata_frame(metadata: Mapping[str, Any] | None) -> bytes:
    """READY's metadata frame; none for no metadata."""
    if not metadata:
        return b""
    frame = json.dumps(dict(metadata), separators=(",", ":")).encode()
    if len(frame) > p.MAX_READY_METADATA:
        raise ValueError(f"a worker's metadata is at most {p.MAX_READY_METADATA} bytes of "
                         f"JSON, not {len(frame)}")
    return frame


def _checked(frames: list) -> list:
    """Replies may not start like an error, or a client would take them for one."""
    marker = reserved_marker(frames)
    if marker is not None:
        raise ValueError(f"a reply may not start with the reserved frame {marker!r}")
    return frames
