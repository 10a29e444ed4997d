"""The broker's socket loop: owns the ROUTER sockets, feeds ``BrokerCore``, sends its output.

The loop never blocks on anything but ``poll``. Work from other threads (and signals)
reaches it through ``call_soon``, which wakes the poll through a pipe; timed work of
layers above (e.g. checking on a worker that is starting) goes through ``call_later``.
When a peer's connection closes, libzmq says so and the core hears it at once
(``Connections``), so a dead worker's request goes to another worker in milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from .core import BrokerConfig, BrokerCore, Event, MMIHandler, Outgoing
from .errors import BrokerError
from .frames import recv_frames, send_frames
from .protocol import service_name
from .security import (
    AdmittedKeys,
    Key,
    KeyPath,
    ServerCurve,
    server_curve,
    start_authenticator,
    z85_key,
)
from .signals import stop_on_signals
from .wakeup import Wakeup

log = logging.getLogger("mdp.broker")

BATCH = 256  # messages taken from one socket before the loop looks at timers again
CLIENT_SIDE = b"\x01"  # tags that tell the core's peers of two sockets apart
WORKER_SIDE = b"\x02"


class Broker:
    """A Majordomo broker on one ROUTER socket, or on a client and a worker socket.

    ``bind`` endpoints serve clients and workers alike; ``worker_bind`` endpoints, when
    given, are a second socket for workers, so the two can be secured or placed apart.
    With the broker's key pair, in memory (``curve``, a ``ServerCurve``) or in a file
    (``curve_secret_key``, NAME.key_secret), every bound socket is a CURVE server, or
    with ``curve_workers_only`` the worker socket alone (workers on tcp from other
    machines, clients on a private ipc socket beside the broker). ``curve_clients`` (a
    directory of NAME.key files, or a list of the public keys) admits only those keys,
    and those given to ``admit`` later; without it any key is admitted (encryption
    without client authentication). ``bound_endpoints`` are the
    endpoints as bound, a tcp port of 0 or ``*`` replaced by the port the system chose.
    The socket file of an ipc endpoint gets ``ipc_mode`` (default owner-only; None leaves
    it to the umask).
    """

    def __init__(self, bind: str | Iterable[str], worker_bind: str | Iterable[str] = (),
                 config: BrokerConfig | None = None, context: zmq.Context | None = None,
                 *, curve: ServerCurve | None = None, curve_secret_key: KeyPath | None = None,
                 curve_clients: KeyPath | Iterable[Key] | None = None,
                 curve_workers_only: bool = False, ipc_mode: int | None = 0o600):
        self.endpoints = [bind] if isinstance(bind, str) else list(bind)
        self.worker_endpoints = [worker_bind] if isinstance(worker_bind, str) else list(worker_bind)
        if not self.endpoints:
            raise ValueError("a broker needs at least one endpoint to bind")
        self.curve = server_curve(curve_secret_key, curve=curve)
        if curve_clients is not None and self.curve is None:
            raise ValueError("curve_clients needs the broker's key pair (curve_secret_key or "
                             "curve)")
        if curve_workers_only and not (self.curve and self.worker_endpoints):
            raise ValueError("curve_workers_only needs the broker's key pair (curve_secret_key "
                             "or curve) and worker_bind")
        self.curve_workers_only = curve_workers_only
        # None: any key is admitted
        self.admitted = None if curve_clients is None else AdmittedKeys.of(curve_clients)
        self.bound_endpoints: list[str] = []
        self.ipc_mode = ipc_mode
        self._auth: ThreadAuthenticator | None = None  # ZAP handler while CURVE is bound
        self.core = BrokerCore(config, time.monotonic(), emit_events=False)  # until a hook
        self.context = context or zmq.Context.instance()
        self.hooks: list[Callable[[Event], None]] = []
        self.ready = threading.Event()  # set once every endpoint is bound
        self._calls: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._stopping = False
        self.stop_reason = ""
        self._wakeup = Wakeup()
        self._sockets: dict[bytes, zmq.Socket] = {}
        self._monitors: list[zmq.Socket] = []  # one per ROUTER: its disconnect events
        self._connections = Connections()
        self._gone: list[bytes] = []  # peers whose connection closed, not yet told the core
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ control

    def add_hook(self, hook: Callable[[Event], None]) -> None:
        """``hook(event)`` runs in the loop's thread after each event; it must not block.

        The core makes no events until the first hook is added: a broker nobody listens
        to spares every request the Event objects.
        """
        self.hooks.append(hook)
        self.core.enable_events()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the loop's thread. Safe from any thread."""
        self._calls.append(fn)
        self._wakeup.wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the loop's thread after ``delay`` seconds. Loop thread only."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), fn))

    def send(self, out: Outgoing) -> None:
        """Send what a call into ``self.core`` returned. Loop thread only."""
        for peer, frames in out:
            self._send(peer, frames)

    # ------------------------------------------------------------ for layers above

    def add_mmi_handler(self, service: str | bytes, handler: MMIHandler) -> None:
        """Answer ``service`` (an ``mmi.`` name) with ``handler(body) -> frames``, in the
        loop's thread. Call it before ``start`` or from the loop's thread."""
        self.core.add_mmi_handler(service, handler)

    def admit(self, public_key: Key) -> None:
        """Admit the client or worker with ``public_key`` (Z85) from now on, as if it were
        in ``curve_clients``; a broker that admits any key admits it already. Safe from
        any thread, before or after ``start``."""
        if self.curve is None:
            raise ValueError("this broker has no CURVE key pair, so no keys to admit")
        key = z85_key(public_key)
        if self.admitted is not None:
            self.admitted.admit(key)

    def fail_queued(self, service: str | bytes, error: BrokerError) -> None:
        """Answer every request waiting for ``service`` with ``error``. Loop thread only."""
        self.send(self.core.fail_queued(service_name(service), error))

    def service_workers(self, service: str | bytes) -> int:
        """How many workers are registered for ``service``. Loop thread only."""
        return self.core.service_workers(service_name(service))

    def queued(self, service: str | bytes) -> int:
        """How many requests wait for ``service``. Loop thread only."""
        state = self.core.services.get(service_name(service))
        return len(state.queue) if state is not None else 0

    def idle_processes(self, service: str | bytes) -> list[dict]:
        """The READY metadata of the idle worker processes of ``service`` while nothing
        waits for it (``BrokerCore.idle_processes``). Loop thread only."""
        return self.core.idle_processes(service_name(service))

    def stop(self, reason: str = "asked to stop") -> None:
        """Ask the loop to disconnect its workers and end. Safe from any thread."""
        log.info("broker stopping: %s", reason)
        self.stop_reason = self.stop_reason or reason
        self._stopping = True
        self._wakeup.wake()

    def start(self) -> threading.Thread:
        """Run the broker in a daemon thread; returns once it is bound."""
        self._thread = threading.Thread(target=self.run, name="mdp-broker", daemon=True)
        self._thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the broker did not bind within 10 s")
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        """Bind, serve until ``stop()`` or SIGINT/SIGTERM, then shut down cleanly."""
        self._bind()
        try:
            with stop_on_signals(self.stop):
                self.ready.set()
                self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        poller.register(self._wakeup.fileno(), zmq.POLLIN)
        sides = {sock: side for side, sock in self._sockets.items()}
        core = self.core
        while not self._stopping:
            timeout = max(0.0, self._next_deadline() - time.monotonic())
            for sock, _ in poller.poll(timeout * 1000):
                if sock in sides:
                    self._drain(sock, sides[sock])
                elif sock == self._wakeup.fileno():
                    self._run_calls()
                else:
                    self._note_disconnects()
            if self._gone:
                self._tell_disconnects(sides)
            now = time.monotonic()
            if now >= core.next_deadline():
                self.send(core.tick(now))
            self._run_timers(now)
            self._deliver_events()

    def _drain(self, sock: zmq.Socket, side: bytes) -> bool:
        """Handle what has arrived on ``sock``, up to BATCH messages; True if that was all.

        What goes to a worker is sent at once, so that it starts while the loop goes on;
        what goes to a client waits until the batch is done, so that a client with many
        requests in flight takes its replies in one wake-up. (Both measured faster than
        sending everything at once or everything at the end.) Once a peer has a message
        held back, its later ones are held too: no peer sees its messages reordered.
        """
        core = self.core
        now = time.monotonic()
        prefix = side if len(self._sockets) > 1 else b""
        recv = sock.recv
        known = self._connections.knows
        held: Outgoing = []
        held_peers: set[bytes] = set()
        emptied = False
        for _ in range(BATCH):
            try:
                identity = recv(zmq.NOBLOCK)  # short: copied into bytes, cheaper than a Frame
            except zmq.Again:
                emptied = True
                break
            peer, frames = prefix + identity, recv_frames(sock, copy=False)
            if known(peer):
                out = core.handle(peer, frames, now)
            else:
                out = self._learn(peer, frames[0], now) + core.handle(peer, frames, now)
            for target, message in out:
                if target in core.workers and target not in held_peers:
                    self._send(target, message)
                else:
                    held.append((target, message))
                    held_peers.add(target)
        self.send(held)
        return emptied

    def _send(self, peer: bytes, frames: list) -> None:
        if len(self._sockets) > 1:
            sock, identity = self._sockets[peer[:1]], peer[1:]
        else:
            sock, identity = self._sockets[CLIENT_SIDE], peer
        # copy=True is right for both kinds: zmq.Frames from the wire (bodies, however
        # large) are always sent by reference; bytes are the broker's own short frames.
        send_frames(sock, [identity, *frames])

    # ------------------------------------------------------------ closed connections
    #
    # libzmq reports a closed connection after the messages that came on it, and before
    # its descriptor can be reused. So: read the reports before noting a new peer's
    # descriptor (it may be a reused one), and tell the core only once the sockets have
    # been emptied after the reports were read (the peer's last messages come first, and
    # may still be read after its report: they came on the descriptor it closed).

    def _learn(self, peer: bytes, frame: zmq.Frame, now: float) -> Outgoing:
        """Note the connection of a peer heard from for the first time, or since the
        report that its connection closed.

        A message that came on that closed connection is the peer's last word, for the
        core before the close. A peer that chose its identity may be back on a new
        connection before its old one was told the core: that is told now, or it would
        undo the new one. (Its old messages are all read: libzmq takes no second
        connection with an identity in use.)
        """
        self._note_disconnects()
        if self._connections.came_before_close(peer, frame):
            return []
        displaced = self._connections.learn(peer, frame)
        if displaced is not None:  # its closing report was lost (a monitor's queue is finite)
            self._gone.append(displaced)
        if peer in self._gone:
            self._gone.remove(peer)
            return self.core.peer_disconnected(peer, now)
        return []

    def _note_disconnects(self) -> None:
        for monitor in self._monitors:
            while True:
                try:
                    event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                peer = self._connections.closed(int(event["value"]))
                if peer is not None:
                    self._gone.append(peer)

    def _tell_disconnects(self, sides: dict[zmq.Socket, bytes]) -> None:
        """Hand the core the peers whose connection closed, once every socket has been
        emptied since (a socket kept busy past BATCH puts it off to a later round)."""
        while True:
            noted = len(self._gone)
            for sock, side in sides.items():
                if not self._drain(sock, side):
                    return
            if len(self._gone) == noted:
                break
        gone, self._gone = self._gone, []
        now = time.monotonic()
        for peer in gone:
            self._connections.forget(peer)
            self.send(self.core.peer_disconnected(peer, now))

    def _next_deadline(self) -> float:
        deadline = self.core.next_deadline()
        if self._timers:
            deadline = min(deadline, self._timers[0][0])
        return deadline

    def _run_calls(self) -> None:
        self._wakeup.drain()
        while self._calls:
            self._guarded(self._calls.popleft())

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            self._guarded(fn)

    def _deliver_events(self) -> None:
        if not self.core.events:
            return
        for event in self.core.take_events():
            for hook in self.hooks:
                self._guarded(lambda hook=hook, event=event: hook(event))

    def _guarded(self, fn: Callable[[], None]) -> None:
        """Code from layers above must never take the loop down."""
        try:
            fn()
        except Exception:
            log.exception("a broker hook or callback raised; the broker goes on")

    # ------------------------------------------------------------ sockets

    def _bind(self) -> None:
        sides = [(CLIENT_SIDE, self.endpoints)]
        if self.worker_endpoints:
            sides.append((WORKER_SIDE, self.worker_endpoints))
        if self.curve is not None:  # before any bind: without ZAP handler libzmq admits all
            self._auth = start_authenticator(self.context, self.admitted)
        for side, endpoints in sides:
            sock = self.context.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 500)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            if self.curve is not None and (side == WORKER_SIDE or not self.curve_workers_only):
                self.curve.apply(sock)
            self._sockets[side] = sock
            self._monitors.append(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED))
            for endpoint in endpoints:
                try:
                    _bind(sock, endpoint, self.ipc_mode)
                except (zmq.ZMQError, OSError) as error:
                    self._close_sockets()
                    raise OSError(f"cannot bind the broker to {endpoint}: {error}") from error
                self.bound_endpoints.append(_as_bound(endpoint, sock))
        log.info("broker bound to %s", ", ".join(self.bound_endpoints))

    def _shutdown(self) -> None:
        self.send(self.core.shutdown(time.monotonic()))
        self._deliver_events()
        self._close_sockets()
        for endpoint in self.endpoints + self.worker_endpoints:
            _remove_ipc_file(endpoint)
        self._wakeup.close()
        log.info("broker stopped")

    def _close_sockets(self) -> None:
        for sock, monitor in zip(self._sockets.values(), self._monitors, strict=True):
            sock.disable_monitor()
            monitor.close(linger=0)
        for sock in self._sockets.values():
            sock.close()
        self._sockets, self._monitors = {}, []
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


class Connections:
    """Which connection each peer speaks on, so that libzmq's disconnect events, which name
    a file descriptor and not a peer, reach the core as the peer that left.

    libzmq has ROUTER_NOTIFY for this only in its draft API, which pyzmq's wheels leave
    out; a socket monitor's EVENT_DISCONNECTED and the message property ZMQ_SRCFD (the
    descriptor a message came on) give the same on any build. A peer whose descriptor
    cannot be read (inproc) is remembered without one and left to heartbeats.
    """

    def __init__(self) -> None:
        self._fd_of: dict[bytes, int | None] = {}
        self._peer_on: dict[int, bytes] = {}
        self._closing: dict[bytes, int] = {}  # reported closed, not yet told: its descriptor

    def knows(self, peer: bytes) -> bool:
        return peer in self._fd_of

    def learn(self, peer: bytes, frame: zmq.Frame) -> bytes | None:
        """Note the connection ``frame`` came on; returns the peer that was noted on the
        same descriptor before, if any: its connection must have closed."""
        fd = _descriptor(frame)
        self._fd_of[peer] = fd
        self._closing.pop(peer, None)
        if fd is None:
            return None
        displaced = self._peer_on.get(fd)
        if displaced is not None:
            del self._fd_of[displaced]
        self._peer_on[fd] = peer
        return displaced

    def closed(self, fd: int) -> bytes | None:
        """The peer whose connection on ``fd`` closed (None if it never sent anything)."""
        peer = self._peer_on.pop(fd, None)
        if peer is not None:
            del self._fd_of[peer]
            self._closing[peer] = fd
        return peer

    def came_before_close(self, peer: bytes, frame: zmq.Frame) -> bool:
        """Whether ``frame`` came on the connection of ``peer`` reported closed (read
        after the report, sent before the close)."""
        fd = self._closing.get(peer)
        return fd is not None and fd == _descriptor(frame)

    def forget(self, peer: bytes) -> None:
        """The core has been told that the connection of ``peer`` closed."""
        self._closing.pop(peer, None)


def _descriptor(frame: zmq.Frame) -> int | None:
    try:
        return frame.get(zmq.SRCFD)
    except zmq.ZMQError:
        return None


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def _as_bound(endpoint: str, sock: zmq.Socket) -> str:
    """A tcp endpoint with the port the system chose (libzmq's last endpoint) in place
    of 0 or ``*``; any other endpoint as it was given."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint.rpartition(":")
    if port not in ("0", "*"):
        return endpoint
    return f"{host}:{sock.last_endpoint.decode().rpartition(':')[2]}"


def _bind(sock: zmq.Socket, endpoint: str, ipc_mode: int | None) -> None:
    path = ipc_path(endpoint)
    if path is None or path.name.startswith("@"):  # tcp, or an abstract socket: no file
        sock.bind(endpoint)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if ipc_mode is None:
        sock.bind(endpoint)
    else:
        _bind_ipc_file(sock, path, ipc_mode)


def _bind_ipc_file(sock: zmq.Socket, path: Path, mode: int) -> None:
    """Bind to the socket file ``path`` with ``mode``, never wider for a moment.

    The socket is bound in a fresh directory only this user can enter, given its mode
    there, then renamed into place (atomic, and the socket stays bound). Setting the umask
    around the bind would do as well, but the umask belongs to the whole process and
    another thread may create files meanwhile; a chmod after the bind would leave the
    file open to anyone for a moment, long enough to connect.
    """
    scratch = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))  # mode 0700
    temporary = scratch / "s"
    try:
        sock.bind(f"ipc://{temporary}")
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        scratch.rmdir()


def _remove_ipc_file(endpoint: str) -> None:
    path = ipc_path(endpoint)
    if path is not None:
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass
