"""The broker's bookkeeping as pure code: frames and the time in, frames to send out.

No sockets and no clock here. ``BrokerCore.handle`` takes what one peer sent and the
current time and returns ``(peer, frames)`` pairs for the loop to send; ``tick`` does the
timed work (heartbeats, dead workers, expired requests); ``peer_disconnected`` takes the
news that a peer's connection closed. Whatever a layer above may want to react to (a
request waiting for a service with no worker, a worker lost, ...) is collected for
``take_events``, once ``enable_events`` was called (or the core made with
``emit_events=True``): a loop with nobody listening leaves them off, so that a request
costs no Event objects.

Each request the broker forwards gets a fresh 8-byte id as its "client address", so a
late reply from a worker that was given up for dead is recognised and dropped instead of
being sent twice.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from . import __version__
from . import protocol as p
from .errors import (
    BROKER_ERROR_MARKER,
    MARKER_LENGTH,
    WORKER_ERROR_MARKER,
    AttemptsExhausted,
    BrokerError,
    BrokerStopping,
    QueueFull,
    RequestExpired,
    ServiceNameTooLong,
    broker_error_body,
    reserved_marker,
    worker_error_body,
)
from .fair_queue import ClientShare, FairQueue
from .identities import client_of, describe_client, peer_name
from .protocol import MAX_SERVICE_NAME
from .timings import ServiceTimings

log = logging.getLogger("mdp.broker")

Peer = bytes
Outgoing = list[tuple[Peer, list]]
MMIHandler = Callable[[list], list]


@dataclass
class BrokerConfig:
    heartbeat_interval: float = 2.5
    heartbeat_liveness: int = 3  # intervals an idle worker may stay silent
    busy_timeout: float | None = 900.0  # how long a busy worker may stay silent
    request_expiry: float | None = 300.0  # how long a request may wait for a worker
    queue_limit: int | None = 10_000  # per service
    max_attempts: int = 3  # workers a request may be tried on before it is given up
    retired_services: int = 1000  # forgotten services whose counters mmi.status keeps
    client_linger: float = 60.0  # how long an idle client's counts are kept (mdp.md 6.1)
    sharing_window: float = 2.0  # how long after its last request a client shares (mmi.clients)
    clients_shown: int = 100  # clients listed per service in mmi.status, most queued first

    @property
    def worker_expiry(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


@dataclass(eq=False, slots=True)
class Request:
    id: bytes
    client: Peer
    dialect: p.Dialect
    service: bytes
    body: list
    queued_at: float
    expires_at: float
    share: ClientShare  # its client's part of the service (fair_queue)
    weight: int = 1  # units of work in it, as a layer above counts them (``weigh``)
    dispatched_at: float = 0.0  # when a worker was last given it
    attempts: int = 0
    abandoned: bool = False  # its client's connection closed: nobody waits for it
    partials: tuple = ()  # buffered for MDP/0.1 clients (a tuple: most requests need none)


class WorkerState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"


IDLE, BUSY = WorkerState.IDLE, WorkerState.BUSY  # plain names: an Enum's attributes are slow


class StateError(RuntimeError):
    """A worker was moved in a way its state does not allow: a bug, never bad input."""


@dataclass(eq=False, slots=True)
class Process:
    """The connections of one worker process for one service: those whose READY metadata
    names the same ``process`` (mdp.md 5.4), or a connection alone. It is busy while one
    of them holds a request (``busy`` counts them)."""

    key: str | bytes  # the metadata's ``process``, or the connection's identity
    connections: int = 0
    busy: int = 0


@dataclass(eq=False, slots=True)
class Worker:
    """A registered worker. Its state changes only through ``assign`` and ``release``."""

    peer: Peer
    dialect: p.Dialect
    service: bytes
    heard_at: float  # when it last sent anything
    since: float
    process: Process  # shared with the other connections of its process
    state: WorkerState = IDLE
    request: Request | None = None
    served: int = 0  # replies with results, as the service's ``served``
    failed: int = 0  # worker-error replies
    metadata: dict = field(default_factory=dict)  # what its READY said of it (mdp.md 5.4)

    def assign(self, request: Request) -> None:
        if self.state is not IDLE:
            raise StateError(f"worker {peer_name(self.peer)} is busy; it cannot take "
                             f"another request")
        self.state, self.request = BUSY, request
        self.process.busy += 1
        request.share.in_flight += 1

    def release(self) -> Request:
        """The request it finished (or held when it was lost); it is idle again."""
        if self.state is not BUSY:
            raise StateError(f"worker {peer_name(self.peer)} is idle; it holds no request")
        request, self.request = self.request, None
        self.state = IDLE
        self.process.busy -= 1
        request.share.in_flight -= 1
        return request


@dataclass(eq=False, slots=True)
class Service:
    name: bytes
    queue: FairQueue = field(default_factory=FairQueue)  # waiting, client by client
    workers: set = field(default_factory=set)
    idle: OrderedDict = field(default_factory=OrderedDict)  # peer -> Worker, LRU first
    processes: dict = field(default_factory=dict)  # metadata "process" (or peer) -> Process
    served: int = 0
    failed: int = 0  # worker errors, and the lost and not_served below
    expired: int = 0
    rejected: int = 0
    abandoned: int = 0
    lost: int = 0  # given up after the workers that held them died
    not_served: int = 0  # answered by the layer above (``fail_queued``): no worker started
    served_units: int = 0  # as ``served`` and ``failed``, in the units of ``weigh``
    failed_units: int = 0
    timings: ServiceTimings | None = None  # once ``enable_timings``

    def in_use(self) -> bool:
        return bool(self.workers or self.queue)


class EventKind(str, enum.Enum):
    """What happened to a service. A str, so that ``kind == "demand"`` holds."""

    DEMAND = "demand"  # a request waits and no worker is free for it
    WORKER_READY = "worker-ready"
    WORKER_LOST = "worker-lost"
    SERVED = "served"  # a worker replied (detail: "ok" or "failed")
    DROPPED = "dropped"  # a request was given up (detail: the reason)

    def __str__(self) -> str:
        return self.value


# plain names: an Enum's attributes are slow (as IDLE, BUSY)
DEMAND, WORKER_READY, WORKER_LOST = EventKind.DEMAND, EventKind.WORKER_READY, EventKind.WORKER_LOST
SERVED, DROPPED = EventKind.SERVED, EventKind.DROPPED


@dataclass(frozen=True, slots=True)
class ReplyFacts:
    """What a layer above reads in a successful reply (``BrokerCore.read_reply``)."""

    failed_units: int = 0  # of the request's units, those that failed alone
    work_seconds: float | None = None  # the worker's own time for it, where it says


NO_FACTS = ReplyFacts()


@dataclass(frozen=True)
class Event:
    """Something a layer above the broker may act on, such as starting a worker."""

    kind: EventKind
    service: str
    worker: str | None = None
    queued: int = 0
    workers: int = 0  # connections
    busy: int = 0
    detail: str = ""
    processes: int = 0  # worker processes the connections belong to (mdp.md 5.4)


class BrokerCore:
    def __init__(self, config: BrokerConfig | None = None, now: float = 0.0, *,
                 emit_events: bool = True):
        self.config = config or BrokerConfig()
        self.started_at = now
        self.services: dict[bytes, Service] = {}  # in use: with workers or a queue
        self.retired: OrderedDict[bytes, Service] = OrderedDict()  # forgotten, newest last
        self.workers: dict[Peer, Worker] = {}
        self.emit_events = emit_events
        self.events: list[Event] = []
        # the units of work in a request, and what a successful reply says of them, where
        # a layer above knows (structures, those that failed, the worker's time)
        self.weigh: Callable[[bytes, list], int] | None = None
        self.read_reply: Callable[[bytes, list], ReplyFacts] | None = None
        self._timed = False  # queue waits and work times kept (``enable_timings``)
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

    def peer_disconnected(self, peer: Peer, now: float) -> Outgoing:
        """The connection of ``peer`` closed: a worker is gone at once (its request goes
        to another), and the requests of a client are abandoned (protocol/mdp.md 10)."""
        worker = self.workers.get(peer)
        if worker is not None:
            self._remove_worker(worker, now, "connection closed")
        self._abandon_requests_of(peer)
        return self._take()

    def shutdown(self, now: float = 0.0) -> Outgoing:
        """Answer every request held with 503 broker-stopping, and DISCONNECT every worker
        so that it reconnects to the next broker at once. Leaves the core empty."""
        for state in list(self.services.values()):
            while state.queue:
                self._reply_error(state.queue.popleft(), _stopping(state))
            self._retire_if_unused(state)
        for worker in list(self.workers.values()):
            if worker.state is BUSY:
                request = worker.release()
                if not request.abandoned:
                    self._reply_error(request, _stopping(self.services[worker.service]))
            self._send(worker.peer, p.to_worker_disconnect(worker.dialect))
            self._remove_worker(worker, now, "the broker stopped")
        return self._take()

    def fail_queued(self, service: bytes, error: BrokerError) -> Outgoing:
        """Answer every request waiting for ``service`` with ``error`` (e.g. start failed)."""
        state = self.services.get(service)
        if state is not None:
            while state.queue:
                request = state.queue.popleft()
                state.failed += 1
                state.not_served += 1
                state.failed_units += request.weight
                self._reply_error(request, error)
            self._retire_if_unused(state)
        return self._take()

    def service_workers(self, service: bytes) -> int:
        """How many workers are registered for ``service`` now."""
        state = self.services.get(service)
        return len(state.workers) if state is not None else 0

    def idle_processes(self, service: bytes) -> list[dict]:
        """The READY metadata of each worker process of ``service`` (mdp.md 5.4) that
        holds no request, while no request waits for it (it would take it at once)."""
        state = self.services.get(service)
        if state is None or state.queue:
            return []
        found = {}
        for peer in state.workers:
            worker = self.workers[peer]
            if not worker.process.busy:
                found.setdefault(id(worker.process), worker.metadata)
        return list(found.values())

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def enable_events(self) -> None:
        """Collect events from now on (for ``take_events``)."""
        self.emit_events = True

    def enable_timings(self) -> None:
        """Keep each service's queue waits and work times from now on (``mdp.timings``:
        for metrics and the last minute's figures in ``status``); off, they cost nothing."""
        self._timed = True
        for state in self.services.values():
            state.timings = state.timings or ServiceTimings()

    def add_mmi_handler(self, service: str | bytes, handler: MMIHandler) -> None:
        """Answer ``service`` (an ``mmi.`` name) with ``handler(body) -> frames``, in place
        of the broker's own answer if it has one."""
        name = p.service_name(service)
        if not name.startswith(p.MMI_PREFIX):
            raise ValueError(f"MMI services start with 'mmi.', not {service!r}")
        self.mmi_handlers[name] = handler

    # ------------------------------------------------------------ dispatch

    def _on_worker_message(self, peer: Peer, kind: type, dialect: p.Dialect, name: bytes,
                           body: list, final: bool, now: float) -> None:
        """``name`` is the client address of a WorkerReply, the service of a Ready."""
        worker = self.workers.get(peer)
        if worker is not None:
            worker.heard_at = now
        if kind is p.WorkerReply:
            self._on_worker_reply(peer, worker, dialect, name, body, final, now)
        elif kind is p.Heartbeat:
            if worker is None:
                self._send(peer, p.to_worker_disconnect(dialect))
        elif kind is p.Ready:
            self._on_ready(peer, worker, dialect, name, body, now)
        elif kind is p.Disconnect:
            if worker is not None:
                self._remove_worker(worker, now, "disconnected")

    def _on_client_request(self, peer: Peer, dialect: p.Dialect, service: bytes, body: list,
                           now: float) -> None:
        self.counters["requests"] += 1
        if len(service) > MAX_SERVICE_NAME:
            self._send(peer, _error_reply(dialect, service, _name_too_long(service)))
            return
        if service.startswith(p.MMI_PREFIX):
            self._answer_mmi(peer, dialect, service, body, now)
            return
        state = self._service(service, now)
        limit = self.config.queue_limit
        if limit is not None and len(state.queue) >= limit:
            state.rejected += 1
            error = QueueFull(f"{len(state.queue)} requests already wait for "
                              f"'{_text(service)}' (limit {limit})", _text(service))
            self._send(peer, _error_reply(dialect, service, error))
            self._retire_if_unused(state)
            return
        self._next_id += 1
        expiry = self.config.request_expiry
        request = Request(self._next_id.to_bytes(8, "big"), peer, dialect, service, body, now,
                          now + expiry if expiry is not None else float("inf"),
                          state.queue.share(client_of(peer), now),
                          self.weigh(service, body) if self.weigh is not None else 1)
        state.queue.append(request)
        self._next_expiry = min(self._next_expiry, request.expires_at)
        self._dispatch(state, now)
        if state.queue:
            self._emit_service_event(DEMAND, state)

    def _on_ready(self, peer: Peer, worker: Worker | None, dialect: p.Dialect, service: bytes,
                  body: list, now: float) -> None:
        if worker is not None:
            self._disconnect(worker, now, "sent READY twice")
            return
        refusal = _refuse_registration(service)
        if refusal:
            self._warn_once(f"ready:{refusal}", f"refused a worker's READY: {refusal}")
            self._send(peer, p.to_worker_disconnect(dialect))
            return
        metadata = self._ready_metadata(body) if body else {}
        state = self._service(service, now)
        key = _process_key(peer, metadata)
        process = state.processes.setdefault(key, Process(key))
        process.connections += 1
        worker = Worker(peer, dialect, service, now, now, process, metadata=metadata)
        self.workers[peer] = worker
        state.workers.add(peer)
        state.idle[peer] = worker
        self._emit_service_event(WORKER_READY, state, worker)
        self._dispatch(state, now)

    def _ready_metadata(self, body: list) -> dict:
        """The JSON object a READY carries after its service; anything else is ignored
        (logged once), the worker is registered all the same."""
        frame = p.frame_bytes(body[0])
        if len(frame) > p.MAX_READY_METADATA:
            why = f"it is {len(frame)} bytes long (at most {p.MAX_READY_METADATA})"
        else:
            try:
                metadata = json.loads(frame)
            except (ValueError, RecursionError):  # (RecursionError: nested too deep)
                why = "it is not JSON"
            else:
                if isinstance(metadata, dict):
                    return metadata
                why = "it is not a JSON object"
        self._warn_once(f"metadata:{why}", f"ignored a READY's metadata frame: {why}")
        return {}

    def _on_worker_reply(self, peer: Peer, worker: Worker | None, dialect: p.Dialect,
                         address: bytes, body: list, final: bool, now: float) -> None:
        if worker is None:
            self._send(peer, p.to_worker_disconnect(dialect))
            return
        request = worker.request
        if request is None or request.id != address:
            self._warn_once(f"stale:{peer!r}", "dropped a reply for a request the worker "
                            "no longer holds (it was given up and re-sent elsewhere)")
            return
        # (the length test first: most replies are not errors, and a call costs)
        marker = reserved_marker(body) if body and len(body[0]) == MARKER_LENGTH else None
        if marker == BROKER_ERROR_MARKER:
            body, marker = self._forged_broker_error(worker), WORKER_ERROR_MARKER
        if not final:
            if not request.abandoned:
                self._relay_partial(request, body, error=marker is not None)
            return
        if not request.abandoned:
            self._relay_final(request, body, error=marker is not None)
        self.counters["replies"] += 1
        worker.release()
        state = self.services[worker.service]
        failed = marker is not None
        facts = self.read_reply(request.service, body) if self.read_reply and not failed \
            else NO_FACTS
        units_failed = request.weight if failed else \
            max(0, min(request.weight, facts.failed_units))
        share = request.share
        share.last_seen = now
        if failed:
            state.failed += 1
            worker.failed += 1
            share.failed += 1
        else:
            state.served += 1
            worker.served += 1
            share.served += 1
        state.failed_units += units_failed
        state.served_units += request.weight - units_failed
        if state.timings is not None:
            work = facts.work_seconds
            state.timings.work.observe(now - request.dispatched_at if work is None else work)
            state.timings.units += request.weight - units_failed
        state.idle[peer] = worker
        self._emit_service_event(SERVED, state, worker, "failed" if failed else "ok")
        self._dispatch(state, now)

    def _forged_broker_error(self, worker: Worker) -> list:
        """Only the broker may say "broker error"; a worker that tries is reported instead."""
        why = ("the worker's reply began with the reserved broker-error frame; the broker "
               "replaced it with this error")
        self._warn_once(f"forged:{worker.peer!r}", f"worker {peer_name(worker.peer)}: {why}")
        return worker_error_body("ProtocolError", why, "", peer_name(worker.peer))

    # An MDP/0.1 client gets one reply, the parts joined: an error in any part is all of
    # it (the first one), or its marker would not come first and the client would take it
    # for the worker's results.

    def _relay_partial(self, request: Request, body: list, error: bool) -> None:
        if request.dialect is not p.Dialect.V01:
            self._send(request.client, p.to_client_reply(request.dialect, request.service,
                                                         body, final=False))
        elif reserved_marker(request.partials) is None:
            request.partials = tuple(body) if error else request.partials + tuple(body)

    def _relay_final(self, request: Request, body: list, error: bool) -> None:
        if reserved_marker(request.partials) is not None:
            body = list(request.partials)
        elif request.partials and not error:
            body = [*request.partials, *body]
        self._send(request.client, p.to_client_reply(request.dialect, request.service, body))

    # ------------------------------------------------------------ queues and workers

    def _dispatch(self, state: Service, now: float) -> None:
        """Hand queued requests to idle workers (``_take_idle``)."""
        while state.queue and state.idle:
            request = state.queue.popleft()
            worker = _take_idle(state)
            worker.assign(request)
            request.attempts += 1
            request.dispatched_at = now
            if state.timings is not None:
                state.timings.wait.observe(now - request.queued_at)
            self._send(worker.peer, p.to_worker_request(worker.dialect, request.id,
                                                        request.body))

    def _remove_worker(self, worker: Worker, now: float, reason: str) -> None:
        del self.workers[worker.peer]
        state = self.services[worker.service]
        state.workers.discard(worker.peer)
        state.idle.pop(worker.peer, None)
        request = worker.release() if worker.state is BUSY else None
        worker.process.connections -= 1
        if not worker.process.connections:
            del state.processes[worker.process.key]
        self._emit_service_event(WORKER_LOST, state, worker, reason)
        if request is not None:
            self._requeue(state, request, now)
        self._retire_if_unused(state)

    def _requeue(self, state: Service, request: Request, now: float) -> None:
        """Put a request whose worker died back at the front, unless it has killed enough
        or nobody waits for it any more. Either way, what still queues wants a worker."""
        if request.abandoned:
            state.abandoned += 1
        elif request.attempts >= self.config.max_attempts:
            self._give_up(state, request)
        else:
            request.partials = ()
            expiry = self.config.request_expiry
            request.expires_at = now + expiry if expiry is not None else float("inf")
            self._next_expiry = min(self._next_expiry, request.expires_at)
            state.queue.appendleft(request)
            self._dispatch(state, now)
        if state.queue:
            self._emit_service_event(DEMAND, state)

    def _give_up(self, state: Service, request: Request) -> None:
        state.failed += 1
        state.lost += 1
        state.failed_units += request.weight
        error = AttemptsExhausted(
            f"request to '{_text(request.service)}' was given up after "
            f"{request.attempts} workers died or vanished while handling it",
            _text(request.service))
        self._reply_error(request, error)
        if self.emit_events:
            self.events.append(Event(DROPPED, _text(state.name), detail=error.reason))

    def _abandon_requests_of(self, peer: Peer) -> None:
        """Nobody waits for these any more: drop the queued ones, mark the held ones. A
        client left with nothing queued or held no longer shares the service lately."""
        key = client_of(peer)
        for state in list(self.services.values()):
            dropped = state.queue.drop(lambda request: request.client == peer, key)
            share = state.queue.clients.get(key)
            if share is not None and not share.active():
                share.last_seen = -math.inf
            if dropped:
                state.abandoned += len(dropped)
                self._retire_if_unused(state)
        for worker in self.workers.values():
            if worker.request is not None and worker.request.client == peer:
                worker.request.abandoned = True

    def _disconnect(self, worker: Worker, now: float, reason: str) -> None:
        self._warn_once(f"disconnect:{reason}", f"disconnecting a worker: {reason}")
        self._send(worker.peer, p.to_worker_disconnect(worker.dialect))
        self._remove_worker(worker, now, reason)

    def _heartbeat(self, now: float) -> None:
        interval = self.config.heartbeat_interval
        self._next_heartbeat = max(self._next_heartbeat + interval, now + interval)
        for state in self.services.values():
            state.queue.forget_idle(now - self.config.client_linger)
            if state.timings is not None:
                state.timings.remember(now)
        for worker in list(self.workers.values()):
            if now >= worker.heard_at + self._silence_allowed(worker):
                self._send(worker.peer, p.to_worker_disconnect(worker.dialect))
                reason = ("silent while busy for longer than the busy timeout"
                          if worker.state is BUSY else "heartbeats stopped")
                self._remove_worker(worker, now, reason)
            else:
                self._send(worker.peer, p.to_worker_heartbeat(worker.dialect))

    def _silence_allowed(self, worker: Worker) -> float:
        """A busy worker may be one that cannot heartbeat while its handler runs (RFC 7's
        reference worker is single-threaded), so it gets the long busy timeout."""
        if worker.state is IDLE:
            return self.config.worker_expiry
        busy_timeout = self.config.busy_timeout
        return busy_timeout if busy_timeout is not None else float("inf")

    def _expire_requests(self, now: float) -> None:
        soonest = float("inf")
        for state in list(self.services.values()):
            if not state.queue:
                continue
            for request in state.queue.drop(lambda request: now >= request.expires_at):
                state.expired += 1
                self._reply_error(request, _expired_error(state, request, now))
            soonest = min(soonest, min((request.expires_at for request in state.queue),
                                       default=soonest))
            self._retire_if_unused(state)
        self._next_expiry = soonest

    # ------------------------------------------------------------ services

    def _service(self, name: bytes, now: float) -> Service:
        """The service in use by that name; one forgotten lately comes back with its
        counters."""
        state = self.services.get(name)
        if state is None:
            state = self.retired.pop(name, None) or Service(name)
            if self._timed and state.timings is None:
                state.timings = ServiceTimings()
                state.timings.remember(now)  # (its recent figures count from here)
            self.services[name] = state
        return state

    def _retire_if_unused(self, state: Service) -> None:
        """Forget a service nobody offers or waits for, so that names cost no memory for
        ever; the most recent few keep their counters for mmi.status."""
        if state.in_use() or self.services.get(state.name) is not state:
            return
        state.queue.clients.clear()
        del self.services[state.name]
        self.retired[state.name] = state
        while len(self.retired) > self.config.retired_services:
            self.retired.popitem(last=False)

    # ------------------------------------------------------------ MMI

    def _answer_mmi(self, peer: Peer, dialect: p.Dialect, service: bytes, body: list,
                    now: float) -> None:
        handler = self.mmi_handlers.get(service)
        if handler is not None:
            answer = self._call_mmi_handler(handler, service, body)
        elif service == b"mmi.service":
            answer = [self._mmi_service(body)]
        elif service == b"mmi.clients":
            answer = [self._mmi_clients(peer, body, now)]
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

    def _mmi_clients(self, peer: Peer, body: list, now: float) -> bytes:
        """How many other clients than the asker's use the service lately (mdp.md 7): a
        client with a long run of requests makes them short while it shares."""
        if not body:
            return b"400"
        state = self.services.get(p.frame_bytes(body[0]))
        shares = state.queue.clients if state is not None else {}
        me, lately = client_of(peer), now - self.config.sharing_window
        others = sum(1 for key, share in shares.items()
                     if key != me and (share.active() or share.last_seen >= lately))
        return json.dumps({"others": others}).encode()

    def _mmi_service(self, body: list) -> bytes:
        if not body:
            return b"400"
        return b"200" if self.service_workers(p.frame_bytes(body[0])) else b"404"

    def status(self, now: float) -> dict:
        """Everything `mdp status` shows, as plain data."""
        services = {**self.retired, **self.services}
        held: dict[bytes, list[Request]] = {}
        for worker in self.workers.values():
            if worker.request is not None:
                held.setdefault(worker.service, []).append(worker.request)
        return {
            "version": __version__,
            "uptime": now - self.started_at,
            "counters": dict(self.counters),
            "services": {_text(name): _service_status(state, now, self.config.clients_shown,
                                                      held.get(name, []))
                         for name, state in sorted(services.items())},
            "workers": [
                {"id": peer_name(worker.peer), "service": _text(worker.service),
                 "dialect": worker.dialect.value, "state": worker.state.value,
                 "served": worker.served, "failed": worker.failed,
                 "since": now - worker.since,
                 "metadata": worker.metadata}
                for worker in self.workers.values()
            ],
        }

    # ------------------------------------------------------------ helpers

    def _reply_error(self, request: Request, error: BrokerError) -> None:
        self._send(request.client, _error_reply(request.dialect, request.service, error))

    def _emit_service_event(self, kind: EventKind, state: Service, worker: Worker | None = None,
                            detail: str = "") -> None:
        if not self.emit_events:
            return
        busy = len(state.workers) - len(state.idle)
        self.events.append(Event(kind, _text(state.name),
                                 peer_name(worker.peer) if worker else None,
                                 len(state.queue), len(state.workers), busy, detail,
                                 len(state.processes)))

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


def _service_status(state: Service, now: float, clients_shown: int,
                    held: list[Request]) -> dict:
    active = [share for share in state.queue.clients.values() if share.active()]
    active.sort(key=lambda share: (-len(share.queue), -share.in_flight))
    status = {"workers": len(state.workers), "idle": len(state.idle),
              "busy": len(state.workers) - len(state.idle), "queued": len(state.queue),
              "served": state.served, "failed": state.failed, "expired": state.expired,
              "rejected": state.rejected, "abandoned": state.abandoned, "lost": state.lost,
              "not_served": state.not_served,
              "units": {"queued": sum(request.weight for request in state.queue),
                        "in_flight": sum(request.weight for request in held),
                        "served": state.served_units, "failed": state.failed_units},
              "clients_active": len(active),
              "clients": [_client_status(share, now) for share in active[:clients_shown]]}
    if state.timings is not None:
        status["recent"] = state.timings.recent(now)
    return status


def _client_status(share: ClientShare, now: float) -> dict:
    """One client with work queued or held for a service (mdp.md 7)."""
    return {**describe_client(share.key), "queued": len(share.queue),
            "in_flight": share.in_flight, "served": share.served, "failed": share.failed,
            "since": now - share.since,
            "waiting": now - share.queue[0].queued_at if share.queue else 0.0}


def _refuse_registration(service: bytes) -> str:
    """Why a worker may not register ``service``, or "" if it may."""
    if service.startswith(p.MMI_PREFIX):
        return f"the service name {service[:40]!r} is reserved for the broker"
    if len(service) > MAX_SERVICE_NAME:
        return (f"the service name is {len(service)} bytes long "
                f"(at most {MAX_SERVICE_NAME})")
    return ""


def _error_reply(dialect: p.Dialect, service: bytes, error: BrokerError) -> list:
    return p.to_client_reply(dialect, service, broker_error_body(error))


def _expired_error(state: Service, request: Request, now: float) -> RequestExpired:
    waited = now - request.queued_at
    why = ("no worker offers it" if not state.workers
           else f"all {len(state.workers)} workers stayed busy")
    return RequestExpired(f"request to '{_text(state.name)}' expired after {waited:.1f} s "
                          f"in the queue: {why}", _text(state.name))


def _stopping(state: Service) -> BrokerStopping:
    return BrokerStopping(f"the broker stopped before '{_text(state.name)}' answered; "
                          f"send the request again once a broker runs", _text(state.name))


def _name_too_long(service: bytes) -> ServiceNameTooLong:
    shown = _text(service[:40])
    return ServiceNameTooLong(f"the service name '{shown}...' is {len(service)} bytes long; "
                              f"at most {MAX_SERVICE_NAME} are allowed", shown)


def _take_idle(state: Service) -> Worker:
    """The idle worker to take the next request: least recently used first, but passing
    over one whose process is busy with another request while another process is free
    (a process computes one request at a time; mdp.md 6)."""
    for peer, worker in state.idle.items():
        if not worker.process.busy:
            del state.idle[peer]
            return worker
    return state.idle.popitem(last=False)[1]


def _process_key(peer: Peer, metadata: dict) -> str | Peer:
    """What groups a worker's connection with the others of its process: the ``process``
    its READY metadata names, else its own identity."""
    process = metadata.get("process")
    return process if isinstance(process, str) else peer


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")
