"""The broker's bookkeeping as pure code: frames and the time in, frames to send out.

No sockets and no clock here. ``BrokerCore.handle`` takes what one peer sent and the
current time and returns ``(peer, frames)`` pairs for the loop to send; ``tick`` does the
timed work (heartbeats, dead workers, expired requests). Whatever a layer above may want
to react to (a request waiting for a service with no worker, a worker lost, ...) is
appended to ``events`` for the loop to hand on, unless ``emit_events`` is false: a loop
with nobody listening turns them off, so that a request costs no Event objects.

Each request the broker forwards gets a fresh 8-byte id as its "client address", so a
late reply from a worker that was given up for dead is recognised and dropped instead of
being sent twice.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import __version__
from . import protocol as p
from .errors import (
    AttemptsExhausted,
    BrokerError,
    QueueFull,
    RequestExpired,
    broker_error_body,
    is_worker_error,
)

log = logging.getLogger("mdp.broker")

Peer = bytes
Outgoing = list[tuple[Peer, list]]
MMIHandler = Callable[[list], list]


@dataclass
class BrokerConfig:
    heartbeat_interval: float = 2.5
    heartbeat_liveness: int = 3
    request_expiry: float | None = 300.0  # how long a request may wait for a worker
    queue_limit: int | None = 10_000  # per service
    max_attempts: int = 3  # workers a request may be tried on before it is given up

    @property
    def worker_expiry(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


@dataclass
class Request:
    id: bytes
    client: Peer
    dialect: p.Dialect
    service: bytes
    body: list
    queued_at: float
    expires_at: float
    attempts: int = 0
    partials: list = field(default_factory=list)  # buffered for MDP/0.1 clients


@dataclass
class Worker:
    peer: Peer
    dialect: p.Dialect
    service: bytes
    expires_at: float
    since: float
    request: Request | None = None
    served: int = 0


@dataclass
class Service:
    name: bytes
    queue: deque = field(default_factory=deque)
    idle: deque = field(default_factory=deque)  # least recently used on the left
    workers: set = field(default_factory=set)
    served: int = 0
    failed: int = 0
    expired: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class Event:
    """Something a layer above the broker may act on, such as starting a worker."""

    kind: str  # demand | worker-ready | worker-lost | served | dropped
    service: str
    worker: str | None = None
    queued: int = 0
    workers: int = 0
    busy: int = 0
    detail: str = ""


class BrokerCore:
    def __init__(self, config: BrokerConfig | None = None, now: float = 0.0, *,
                 emit_events: bool = True):
        self.config = config or BrokerConfig()
        self.started_at = now
        self.services: dict[bytes, Service] = {}
        self.workers: dict[Peer, Worker] = {}
        self.emit_events = emit_events
        self.events: list[Event] = []
        self.mmi_handlers: dict[bytes, MMIHandler] = {}
        self.counters = {"requests": 0, "replies": 0, "dropped_messages": 0}
        self._next_id = 0
        self._next_heartbeat = now + self.config.heartbeat_interval
        self._next_expiry: float = float("inf")
        self._out: Outgoing = []
        self._warned: set[str] = set()

    # ------------------------------------------------------------ entry points

    def handle(self, peer: Peer, frames: list, now: float) -> Outgoing:
        """Everything one message from ``peer`` causes."""
        try:
            kind, dialect, name, body, final = p.read_peer_message(frames)
        except p.ProtocolError as error:
            self._drop(peer, str(error))
        else:
            if kind is p.ClientRequest:
                self._on_client_request(peer, dialect, name, body, now)
            else:
                self._on_worker_message(peer, kind, dialect, name, body, final, now)
        return self._take()

    def tick(self, now: float) -> Outgoing:
        """Timed work; call it whenever ``now >= next_deadline()``."""
        if now >= self._next_heartbeat:
            self._heartbeat(now)
        if now >= self._next_expiry:
            self._expire_requests(now)
        return self._take()

    def next_deadline(self) -> float:
        return min(self._next_heartbeat, self._next_expiry)

    def shutdown(self) -> Outgoing:
        """DISCONNECT every worker, so they reconnect to the next broker at once."""
        for worker in list(self.workers.values()):
            self._send(worker.peer, p.to_worker_disconnect(worker.dialect))
        return self._take()

    def fail_queued(self, service: bytes, error: BrokerError) -> Outgoing:
        """Answer every request waiting for ``service`` with ``error`` (e.g. start failed)."""
        state = self.services.get(service)
        while state and state.queue:
            request = state.queue.popleft()
            state.failed += 1
            self._reply_error(request, error)
        return self._take()

    # ------------------------------------------------------------ dispatch

    def _on_worker_message(self, peer: Peer, kind: type, dialect: p.Dialect, name: bytes,
                           body: list, final: bool, now: float) -> None:
        """``name`` is the client address of a WorkerReply, the service of a Ready."""
        worker = self.workers.get(peer)
        if worker is not None:
            worker.expires_at = now + self.config.worker_expiry
        if kind is p.WorkerReply:
            self._on_worker_reply(peer, worker, dialect, name, body, final)
        elif kind is p.Heartbeat:
            if worker is None:
                self._send(peer, p.to_worker_disconnect(dialect))
        elif kind is p.Ready:
            self._on_ready(peer, worker, dialect, name, now)
        elif kind is p.Disconnect:
            if worker is not None:
                self._remove_worker(worker, now, "disconnected")

    def _on_client_request(self, peer: Peer, dialect: p.Dialect, service: bytes, body: list,
                           now: float) -> None:
        self.counters["requests"] += 1
        if service.startswith(p.MMI_PREFIX):
            self._answer_mmi(peer, dialect, service, body, now)
            return
        state = self._service(service)
        limit = self.config.queue_limit
        if limit is not None and len(state.queue) >= limit:
            state.rejected += 1
            error = QueueFull(f"{len(state.queue)} requests already wait for "
                              f"'{_text(service)}' (limit {limit})", _text(service))
            self._send(peer, _error_reply(dialect, error))
            return
        self._next_id += 1
        expiry = self.config.request_expiry
        request = Request(self._next_id.to_bytes(8, "big"), peer, dialect, service, body, now,
                          now + expiry if expiry is not None else float("inf"))
        state.queue.append(request)
        self._next_expiry = min(self._next_expiry, request.expires_at)
        self._dispatch(state)
        if state.queue:
            self._emit_service_event("demand", state)

    def _on_ready(self, peer: Peer, worker: Worker | None, dialect: p.Dialect, service: bytes,
                  now: float) -> None:
        if worker is not None:
            self._disconnect(worker, now, "sent READY twice")
            return
        if service.startswith(p.MMI_PREFIX):
            self._warn_once(f"mmi-ready:{peer!r}",
                            f"worker tried to register reserved service {service!r}")
            self._send(peer, p.to_worker_disconnect(dialect))
            return
        worker = Worker(peer, dialect, service, now + self.config.worker_expiry, now)
        self.workers[peer] = worker
        state = self._service(service)
        state.workers.add(peer)
        state.idle.append(peer)
        self._emit_service_event("worker-ready", state, worker)
        self._dispatch(state)

    def _on_worker_reply(self, peer: Peer, worker: Worker | None, dialect: p.Dialect,
                         address: bytes, body: list, final: bool) -> None:
        if worker is None:
            self._send(peer, p.to_worker_disconnect(dialect))
            return
        request = worker.request
        if request is None or request.id != address:
            self._warn_once(f"stale:{peer!r}", "dropped a reply for a request the worker "
                            "no longer holds (it was given up and re-sent elsewhere)")
            return
        if not final:
            self._relay_partial(request, body)
            return
        self._relay_final(request, body)
        self.counters["replies"] += 1
        worker.request = None
        worker.served += 1
        state = self.services[worker.service]
        failed = is_worker_error(body)
        if failed:
            state.failed += 1
        else:
            state.served += 1
        state.idle.append(peer)
        self._emit_service_event("served", state, worker, "failed" if failed else "ok")
        self._dispatch(state)

    def _relay_partial(self, request: Request, body: list) -> None:
        if request.dialect is p.Dialect.V01:
            request.partials.extend(body)
        else:
            self._send(request.client, p.to_client_reply(request.dialect, request.service,
                                                         body, final=False))

    def _relay_final(self, request: Request, body: list) -> None:
        if request.partials:
            body = request.partials + body
        self._send(request.client, p.to_client_reply(request.dialect, request.service, body))

    # ------------------------------------------------------------ queues and workers

    def _dispatch(self, state: Service) -> None:
        """Hand queued requests to idle workers, least recently used first."""
        while state.queue and state.idle:
            request = state.queue.popleft()
            worker = self.workers[state.idle.popleft()]
            request.attempts += 1
            worker.request = request
            self._send(worker.peer, p.to_worker_request(worker.dialect, request.id,
                                                        request.body))

    def _remove_worker(self, worker: Worker, now: float, reason: str) -> None:
        del self.workers[worker.peer]
        state = self.services[worker.service]
        state.workers.discard(worker.peer)
        try:
            state.idle.remove(worker.peer)
        except ValueError:
            pass
        self._emit_service_event("worker-lost", state, worker, reason)
        if worker.request is not None:
            self._requeue(state, worker.request, now)

    def _requeue(self, state: Service, request: Request, now: float) -> None:
        """Put a request whose worker died back at the front, unless it has killed enough."""
        if request.attempts >= self.config.max_attempts:
            state.failed += 1
            error = AttemptsExhausted(
                f"request to '{_text(request.service)}' was given up after "
                f"{request.attempts} workers died or vanished while handling it",
                _text(request.service))
            self._reply_error(request, error)
            if self.emit_events:
                self.events.append(Event("dropped", _text(state.name), detail=error.reason))
            return
        request.partials.clear()
        expiry = self.config.request_expiry
        request.expires_at = now + expiry if expiry is not None else float("inf")
        self._next_expiry = min(self._next_expiry, request.expires_at)
        state.queue.appendleft(request)
        self._dispatch(state)
        if state.queue:
            self._emit_service_event("demand", state)

    def _disconnect(self, worker: Worker, now: float, reason: str) -> None:
        self._warn_once(f"disconnect:{reason}", f"disconnecting a worker: {reason}")
        self._send(worker.peer, p.to_worker_disconnect(worker.dialect))
        self._remove_worker(worker, now, reason)

    def _heartbeat(self, now: float) -> None:
        interval = self.config.heartbeat_interval
        self._next_heartbeat = max(self._next_heartbeat + interval, now + interval)
        for worker in list(self.workers.values()):
            if now >= worker.expires_at:
                self._send(worker.peer, p.to_worker_disconnect(worker.dialect))
                self._remove_worker(worker, now, "heartbeats stopped")
            else:
                self._send(worker.peer, p.to_worker_heartbeat(worker.dialect))

    def _expire_requests(self, now: float) -> None:
        soonest = float("inf")
        for state in self.services.values():
            if not state.queue:
                continue
            kept = deque()
            for request in state.queue:
                if now >= request.expires_at:
                    state.expired += 1
                    self._reply_error(request, _expired_error(state, request, now))
                else:
                    kept.append(request)
                    soonest = min(soonest, request.expires_at)
            state.queue = kept
        self._next_expiry = soonest

    # ------------------------------------------------------------ MMI

    def _answer_mmi(self, peer: Peer, dialect: p.Dialect, service: bytes, body: list,
                    now: float) -> None:
        handler = self.mmi_handlers.get(service)
        if handler is not None:
            answer = self._call_mmi_handler(handler, service, body)
        elif service == b"mmi.service":
            answer = [self._mmi_service(body)]
        elif service == b"mmi.services":
            answer = [json.dumps(sorted(_text(s) for s in self.services)).encode()]
        elif service in (b"mmi.status", b"mmi.workers"):
            status = self.status(now)
            if service == b"mmi.workers":
                status = status["workers"]
            answer = [json.dumps(status).encode()]
        else:
            answer = [b"501"]
        self._send(peer, p.to_client_reply(dialect, service, answer))

    def _call_mmi_handler(self, handler: MMIHandler, service: bytes, body: list) -> list:
        """A layer above's handler must not take the broker down: it answers 500."""
        try:
            return handler(body)
        except Exception:
            log.exception("the MMI handler for %r raised", service)
            return [b"500"]

    def _mmi_service(self, body: list) -> bytes:
        if not body:
            return b"400"
        state = self.services.get(p._b(body[0]))
        return b"200" if state is not None and state.workers else b"404"

    def status(self, now: float) -> dict:
        """Everything `mdp status` shows, as plain data."""
        return {
            "version": __version__,
            "uptime": now - self.started_at,
            "counters": dict(self.counters),
            "services": {_text(name): self._service_status(state)
                         for name, state in sorted(self.services.items())},
            "workers": [
                {"id": peer_name(worker.peer), "service": _text(worker.service),
                 "dialect": worker.dialect.value,
                 "state": "busy" if worker.request is not None else "idle",
                 "served": worker.served, "since": now - worker.since}
                for worker in self.workers.values()
            ],
        }

    def _service_status(self, state: Service) -> dict:
        return {"workers": len(state.workers), "idle": len(state.idle),
                "busy": len(state.workers) - len(state.idle), "queued": len(state.queue),
                "served": state.served, "failed": state.failed, "expired": state.expired,
                "rejected": state.rejected}

    # ------------------------------------------------------------ helpers

    def _service(self, name: bytes) -> Service:
        state = self.services.get(name)
        if state is None:
            state = self.services[name] = Service(name)
        return state

    def _reply_error(self, request: Request, error: BrokerError) -> None:
        self._send(request.client, _error_reply(request.dialect, error))

    def _emit_service_event(self, kind: str, state: Service, worker: Worker | None = None,
                            detail: str = "") -> None:
        if not self.emit_events:
            return
        busy = len(state.workers) - len(state.idle)
        self.events.append(Event(kind, _text(state.name),
                                 peer_name(worker.peer) if worker else None,
                                 len(state.queue), len(state.workers), busy, detail))

    def _send(self, peer: Peer, frames: list) -> None:
        self._out.append((peer, frames))

    def _take(self) -> Outgoing:
        out, self._out = self._out, []
        return out

    def _drop(self, peer: Peer, why: str) -> None:
        self.counters["dropped_messages"] += 1
        self._warn_once(f"drop:{why}", f"dropped a malformed message from {peer.hex()}: {why}")

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)
            log.warning(text)


def _error_reply(dialect: p.Dialect, error: BrokerError) -> list:
    body = broker_error_body(error)
    if dialect is p.Dialect.MAJORTOMO:
        return p.to_client_reply(dialect, p.MMI_ERROR, [p.MMI_ERROR, *body])
    return p.to_client_reply(dialect, p.MMI_ERROR, body)


def _expired_error(state: Service, request: Request, now: float) -> RequestExpired:
    waited = now - request.queued_at
    why = ("no worker offers it" if not state.workers
           else f"all {len(state.workers)} workers stayed busy")
    return RequestExpired(f"request to '{_text(state.name)}' expired after {waited:.1f} s "
                          f"in the queue: {why}", _text(state.name))


def peer_name(peer: Peer) -> str:
    """A worker's routing identity as text when it chose a printable one, else hex.

    A leading control byte is a socket tag added by the broker loop, not part of it.
    """
    identity = peer[1:] if peer[:1] and peer[0] < 0x20 else peer
    if not identity.isascii():  # libzmq's own identities, the usual case: no exception
        return peer.hex()
    text = identity.decode("ascii")
    return text if text.isprintable() else peer.hex()


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")
