"""Start model workers on demand, from inside the broker's loop without ever blocking it.

The broker reports a request that found no idle worker as a "demand" event; this module
starts ``mlipx serve NAME`` for it through a launcher (a local process, or a SLURM job:
``local_launcher``, ``slurm_launcher``; either returns at once) and checks on the start
with timers. When a start fails, every client waiting for that model gets an error
carrying why (an exit code, a job's state) and the worker's last lines of output, such as
what uv could not install. Clients may define models of their own (``define``), which
workers are then started from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mdp.broker import Broker
from mdp.core import Event, EventKind
from mdp.errors import ServiceStartFailed, ServiceUnknown
from mlipx_serve.broker.capacity import Capacity
from mlipx_serve.broker.launch import Launch, Launcher
from mlipx_serve.broker.local_launcher import thread_share
from mlipx_serve.broker.metrics import EXITED, RETIRED, START_FAILED, STARTED, WorkerEvents
from mlipx_serve.client.broker_status import closest_names
from mlipx_serve.errors import DefinitionError
from mlipx_serve.models.definitions import definition_of, model_from, serving_settings
from mlipx_serve.models.extras import model_extras
from mlipx_serve.processes import tail
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.serving import ALL_GPUS, ServingSettings
from mlipx_serve.wire.serving import DEFAULTS as SERVING_DEFAULTS
from mlipx_serve.wire.status import DEFINE_SERVICE, STATUS_SERVICE, ModelOffer, ServingStatus
from mlipx_serve.wire.worker_options import WorkerOptions

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.25
MAX_CLIENT_DEFINITIONS = 1000  # models clients defined that the broker keeps at once
SCALING_EVENTS = (EventKind.DEMAND, EventKind.WORKER_READY, EventKind.SERVED)


def wants_worker(event: Event, starting: bool, max_workers: int) -> bool:
    """Start one more worker, as things stand after ``event``? While requests queue beyond
    the idle workers: one start at a time per model, up to ``max_workers`` processes (a
    batching or prefetching worker holds several connections)."""
    if starting:
        return False
    if event.workers == 0:
        return True
    idle = event.workers - event.busy
    return event.queued > idle and event.processes < max_workers


@dataclass
class AutostartConfig:
    worker: WorkerOptions  # what every started worker is told (its model filled in)
    serving: ServingSettings = SERVING_DEFAULTS  # for models that do not say (all set)
    start_timeout: float = 60.0
    gpus: tuple[str, ...] = ()  # the GPUs of this machine that workers may use ("all")
    max_workers: int | None = None  # worker processes at once, over all models (capacity)


class Autostarter:
    """Starts workers on demand through a ``Launcher`` (local processes or SLURM jobs),
    for the models of its registry and for those clients define (``define``).

    ``refuse_definitions()``: why clients may not have workers started from definitions
    of their own (an endpoint that others can reach: they could run any code), or "" when
    they may. Of the models clients defined it keeps ``MAX_CLIENT_DEFINITIONS``, and
    forgets the least recently used one without workers to make room for a new one."""

    def __init__(self, broker: Broker, registry: Mapping[str, object], config: AutostartConfig,
                 launcher: Launcher, refuse_definitions: Callable[[], str] = str):
        self.broker = broker
        self.registry = dict(registry)
        self.config = config
        self.launcher = launcher
        self.refuse_definitions = refuse_definitions
        self.definitions = {name: definition_of(model) for name, model in registry.items()}
        # Asked at every reply while requests queue: worked out once per model.
        self.settings = {name: self._settings_of(model) for name, model in registry.items()}
        self.by_clients: dict[str, Definition] = {}  # services clients defined, LRU first
        self.starting: dict[str, Launch] = {}
        self.worker_events = WorkerEvents()  # starts, failed starts, exits (metrics)
        self.capacity = Capacity(config.max_workers)
        self._live: dict[str, int] = {}  # each model's worker processes, as last seen
        self._processes: dict[str, int] = {}  # a starting model's worker processes before
        self._checking = False
        broker.add_hook(self.on_event)
        broker.add_mmi_handler(STATUS_SERVICE, self.mmi_status)
        broker.add_mmi_handler(DEFINE_SERVICE, self.define)

    # ------------------------------------------------------------ events

    def on_event(self, event: Event) -> None:
        name = event.service
        if name in self.by_clients:  # used: the last to be forgotten
            self.by_clients[name] = self.by_clients.pop(name)
        if event.kind in (EventKind.WORKER_READY, EventKind.WORKER_LOST):
            for _ in range(self._live.get(name, 0) - event.processes):
                self.worker_events.count(name, EXITED)
            self._live[name] = event.processes
        if event.kind == EventKind.WORKER_READY:
            self._came_up(name, event.processes)
        if name not in self.registry:
            if event.kind == EventKind.DEMAND and event.workers == 0:
                # nothing serves it, nothing will: say so at once
                self.broker.fail_queued(name, self._unknown(name))
            return
        if event.kind in (EventKind.DEMAND, EventKind.SERVED):
            self.capacity.used(name, time.monotonic())
        # Requests that still queue after a worker came up or answered (all sent at once,
        # say) want more workers as much as one that has just come.
        if event.queued and event.kind in SCALING_EVENTS and wants_worker(
                event, name in self.starting, self.workers_limit(self.serving(name))):
            self._start_if_room(name, event.processes)
        elif self.capacity.waiting and event.kind in (EventKind.SERVED, EventKind.WORKER_LOST):
            self._retry_waiting()  # a worker may have gone idle, or left: room now?

    # ------------------------------------------------------------ capacity

    def _start_if_room(self, name: str, processes: int) -> None:
        """Start a worker for ``name`` if the broker runs fewer than its limit, or can
        retire an idle one of another model for it; else its requests wait for room."""
        if self.capacity.full(self.launcher.running()):
            retire = self.capacity.to_retire(self._idle_workers(), name)
            if retire is None or not self.launcher.retire(retire[1]):
                if name not in self.capacity.waiting:
                    log.info("'%s' waits for room: the broker runs its %d workers, none of "
                             "them idle", name, self.capacity.limit)
                self.capacity.waiting[name] = None
                return
            model, _ = retire
            log.info("retired an idle worker of '%s' (used least lately) to make room for "
                     "'%s'", model, name)
            self.capacity.retired[model] += 1
            self.worker_events.count(model, RETIRED)
        self.capacity.waiting.pop(name, None)
        self.start(name, processes)

    def _retry_waiting(self) -> None:
        for name in list(self.capacity.waiting):
            if name in self.starting or not self.broker.queued(name):
                self.capacity.waiting.pop(name, None)
                continue
            self._start_if_room(name, self._live.get(name, 0))
            if name in self.capacity.waiting:
                return  # still no room: the others wait too

    def _idle_workers(self) -> dict[str, list[dict]]:
        """Model -> the READY metadata of its idle worker processes that this broker
        started (a worker started by hand is not the broker's to end)."""
        return {name: [worker for worker in self.broker.idle_processes(name)
                       if self.launcher.started_it(worker)] for name in self.registry}

    def _came_up(self, name: str, processes: int) -> None:
        """A worker of ``name`` registered: the one being started, if it is a process
        more (not one more connection of a batching or prefetching worker)."""
        if name in self.starting and processes > self._processes[name]:
            start = self.starting.pop(name)
            log.info("worker for '%s' came up in %.1f s", name,
                     time.monotonic() - start.started_at)

    def start(self, name: str, processes: int) -> None:
        """Start a worker for ``name``, which has ``processes`` worker processes now."""
        settings = self.serving(name)
        options = dataclasses.replace(self.config.worker, model=name,
                                      definition=self._start_with(name)).serving_as(settings)
        self._processes[name] = processes
        try:
            self.starting[name] = self.launcher.launch(
                options, self.devices(settings), thread_share(self.workers_limit(settings)))
        except (OSError, ValueError) as error:  # a command line too long, a NUL, a log name
            self._cannot_start(name, f"{type(error).__name__}: {error}")
            return
        self.worker_events.count(name, STARTED)
        self._schedule_check()

    # ------------------------------------------------------------ serving settings

    def serving(self, name: str) -> ServingSettings:
        """How model ``name`` is served: its own settings, else the broker's."""
        return self.settings[name]

    def _settings_of(self, model: object) -> ServingSettings:
        return serving_settings(model).over(self.config.serving)

    def devices(self, settings: ServingSettings) -> list[str]:
        """The GPUs a model's workers may use: the broker's (``all``) or those it names."""
        if settings.gpus == ALL_GPUS:
            return list(self.config.gpus)
        return [str(gpu) for gpu in settings.gpus]

    def workers_limit(self, settings: ServingSettings) -> int:
        """Worker processes a model may have: its ``max_workers`` on each of its GPUs."""
        return settings.max_workers * max(1, len(self.devices(settings)))

    def _start_with(self, name: str) -> str | None:
        """The definition a client gave model ``name``, for its workers (else None)."""
        defined = self.by_clients.get(name)
        return None if defined is None else json.dumps(defined.to_json())

    def _unknown(self, name: str) -> ServiceUnknown:
        return ServiceUnknown(
            f"this broker has no worker for '{name}' and no model of that name to start; it "
            f"offers {closest_names(list(self.registry), name)}. A model of your own: put "
            f"it in a models file (ALL_MODELS) and start a worker with `mlipx serve {name} "
            f"--models FILE`, or restart the broker with `--models FILE`", name)

    # ------------------------------------------------------------ client definitions

    def define(self, body: list) -> list[bytes]:
        """``mmi.mlipx.define``: serve the model a client defines (protocol/
        model-definition.md 5). Answers 200 and the service that serves it (one of the
        registry's when it is defined alike, else one of its own, which workers are then
        started for), or 400/403 and why not."""
        refused = self.refuse_definitions()
        if refused:
            return [b"403", refused.encode()]
        try:
            definition = Definition.from_json(json.loads(bytes(body[0]) if body else b""))
        except (ValueError, DefinitionError) as error:  # (JSON's errors are ValueErrors)
            return [b"400", f"not a model definition: {error}".encode()]
        name = self._serving(definition)
        if name in self.by_clients:
            self.by_clients[name] = self.by_clients.pop(name)
        elif name is None:
            if len(self.by_clients) >= MAX_CLIENT_DEFINITIONS and not self._forget_one():
                return [b"403", f"this broker has workers for all the {MAX_CLIENT_DEFINITIONS} "
                                f"models that clients defined; stop some, or restart it"
                                f".".encode()]
            name = definition.own_service()
            self.by_clients[name] = definition
            self.definitions[name] = definition
            self.registry[name] = model_from(definition)
            self.settings[name] = self._settings_of(self.registry[name])
            log.info("serving '%s' as clients define it: %s", name, definition.short())
        return [b"200", name.encode()]

    def _forget_one(self) -> bool:
        """Forget the least recently used model clients defined that has no worker (its
        clients define it again when they come back); False if every one has one."""
        for name in self.by_clients:
            if not self.broker.service_workers(name) and name not in self.starting:
                for known in (self.by_clients, self.definitions, self.registry,
                              self.settings):
                    del known[name]
                log.info("forgot '%s', which clients defined, to make room", name)
                return True
        return False

    def _serving(self, definition: Definition) -> str | None:
        """A service of the registry that is this definition, the definition's own name
        first."""
        for name in definition.services_to_try(self.definitions):
            known = self.definitions.get(name)
            if known is not None and known.fingerprint == definition.fingerprint:
                return name
        return None

    # ------------------------------------------------------------ checks

    def _schedule_check(self) -> None:
        if not self._checking:
            self._checking = True
            self.broker.call_later(CHECK_INTERVAL, self._check)

    def _check(self) -> None:
        self._checking = False
        now = time.monotonic()
        for name, start in list(self.starting.items()):
            ended = start.ended()
            if ended is not None:
                self._failed(name, start, f"{ended} before it registered")
            elif now - start.started_at > self.config.start_timeout:
                self.launcher.stop(start)
                self._failed(name, start, start.timed_out(self.config.start_timeout))
        if self.starting or self.launcher.busy():
            self._schedule_check()

    def _failed(self, name: str, start: Launch, why: str) -> None:
        del self.starting[name]
        output = "" if start.log_path is None else \
            f" Last lines of its output ({start.log_path}):\n{tail(start.log_path)}"
        self._cannot_start(name, f"{why}.{output}")

    def _cannot_start(self, name: str, why: str) -> None:
        """A worker for ``name`` did not start: the requests waiting for it are answered
        at once, unless other workers serve it."""
        self.worker_events.count(name, START_FAILED)
        if self.broker.service_workers(name):
            log.warning("an extra worker for '%s' failed to start: %s", name, why)
            return
        message = f"could not start model '{name}': {why}"
        log.error(message)
        self.broker.fail_queued(name, ServiceStartFailed(message, name))

    # ------------------------------------------------------------ status and stop

    def mmi_status(self, body: list) -> list[bytes]:
        return [json.dumps(self.status().to_json()).encode()]

    def status(self) -> ServingStatus:
        now = time.monotonic()
        return ServingStatus(
            autostart=True,
            models={name: self._offer(name, model) for name, model in self.registry.items()},
            starting={name: now - s.started_at for name, s in self.starting.items()},
            progress={name: s.progress() for name, s in self.starting.items()},
            start_timeout=self.config.start_timeout,
            worker=self.launcher.options(self.config.worker),
            worker_limit=self.capacity.limit, running_workers=self.launcher.running(),
            retired=dict(self.capacity.retired), waiting_for_room=list(self.capacity.waiting),
            **self.launcher.status())

    def _offer(self, name: str, model: object) -> ModelOffer:
        settings = self.serving(name)
        offer = ModelOffer(model_extras(model), serving=settings.to_json(),
                           devices=self.devices(settings),
                           max_workers=self.workers_limit(settings))
        definition = self.definitions.get(name)
        if definition is None:
            return offer
        return dataclasses.replace(
            offer, defined_by="client" if name in self.by_clients else "broker",
            fingerprint=definition.fingerprint, definition=dict(definition.identity),
            short=definition.short(), start_with=self._start_with(name))

    def stop_all(self, grace: float = 10.0) -> None:
        """End every worker this broker started; called after the broker's loop ends."""
        self.launcher.stop_all(grace)
