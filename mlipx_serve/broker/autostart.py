"""Start model workers on demand, from inside the broker's loop without ever blocking it.

The broker reports a request that found no idle worker as a "demand" event; this module
starts ``mlipx serve NAME`` for it through a launcher (a local process, or a SLURM job:
``launchers.py``; either returns at once) and checks on the start with timers. When a
start fails, every client waiting for that model gets an error carrying why (an exit
code, a job's state) and the worker's last lines of output, such as what uv could not
install.

A broker that uses CURVE gives the workers it starts its own key pair, both to know it by
and as their client key, so it must admit its own public key: ``admit_broker_key``. That
opens nothing: whoever holds the broker's secret key can pose as the broker anyway.
"""

from __future__ import annotations

import difflib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq.auth

from mdp.broker import Broker
from mdp.core import Event
from mdp.errors import ServiceStartFailed, ServiceUnknown
from mdp.security import load_key_file
from mlipx_serve.broker.launchers import Launch, Launcher
from mlipx_serve.client.routing import DEFINE_SERVICE
from mlipx_serve.errors import DefinitionError
from mlipx_serve.models.definitions import model_from
from mlipx_serve.models.extras import model_extras
from mlipx_serve.wire.definition import Definition
from mlipx_serve.worker.run import served_definition

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.25
LOG_TAIL_LINES = 20
MAX_CLIENT_DEFINITIONS = 1000  # models clients may define, for the broker's lifetime
OFFER_SHOWN = 12  # closest model names listed for a name the broker does not know


def wants_worker(event: Event, starting: bool, max_workers: int) -> bool:
    """Start one more worker? One start at a time per model, up to ``max_workers``
    processes (a batching or prefetching worker holds several connections)."""
    if event.kind != "demand" or starting:
        return False
    if event.workers == 0:
        return True
    idle = event.workers - event.busy
    return event.queued > idle and event.processes < max_workers


@dataclass
class AutostartConfig:
    start_timeout: float = 60.0
    worker_timeout: float = 300.0
    max_workers: int = 1  # per model (per GPU with gpus)
    heartbeat: float = 2.5  # the broker's: a worker must heartbeat as often as it expects
    models_files: list[str] = field(default_factory=list)
    gpus: int = 0  # how many GPUs the local launcher spreads workers over
    batch_size: int = 1  # passed on to the workers: `mlipx serve --batch-size`
    batch_wait: float = 0.01
    prefetch: int = 0  # and `mlipx serve --prefetch`

    @property
    def workers_per_model(self) -> int:
        return self.max_workers * max(1, self.gpus)

    def worker_options(self) -> list[str]:
        """What every started worker is told, however it is launched."""
        options = ["--timeout", str(self.worker_timeout), "--heartbeat", str(self.heartbeat)]
        if self.batch_size > 1:
            options += ["--batch-size", str(self.batch_size),
                        "--batch-wait", str(self.batch_wait)]
        if self.prefetch:
            options += ["--prefetch", str(self.prefetch)]
        for path in self.models_files:
            options += ["--models", str(path)]
        return options


class Autostarter:
    """Starts workers on demand through a ``Launcher`` (local processes or SLURM jobs),
    for the models of its registry and for those clients define (``define``).

    ``refuse_definitions``: why clients may not have workers started from definitions of
    their own (a plain tcp endpoint: whoever reaches it could run any code), or "" when
    they may."""

    def __init__(self, broker: Broker, registry: Mapping[str, object], config: AutostartConfig,
                 launcher: Launcher, refuse_definitions: str = ""):
        self.broker = broker
        self.registry = dict(registry)
        self.config = config
        self.launcher = launcher
        self.refuse_definitions = refuse_definitions
        self.definitions = {name: served_definition(model) for name, model in registry.items()}
        self.by_clients: dict[str, Definition] = {}  # the services clients defined
        self.starting: dict[str, Launch] = {}
        self._checking = False
        broker.add_hook(self.on_event)
        broker.add_mmi_handler("mmi.mlipx", self.mmi_status)
        broker.add_mmi_handler(DEFINE_SERVICE, self.define)

    # ------------------------------------------------------------ events

    def on_event(self, event: Event) -> None:
        if event.kind == "worker-ready":
            start = self.starting.pop(event.service, None)
            if start is not None:
                log.info("worker for '%s' came up in %.1f s", event.service,
                         time.monotonic() - start.started_at)
        elif event.kind == "demand" and event.service not in self.registry:
            if event.workers == 0:  # nothing serves it, nothing will: say so at once
                self.broker.fail_queued(event.service, self._unknown(event.service))
        elif wants_worker(event, event.service in self.starting, self.config.workers_per_model):
            self.start(event.service)

    def start(self, name: str) -> None:
        options = self.config.worker_options()
        if name in self.by_clients:
            options += ["--definition", json.dumps(self.by_clients[name].to_json())]
        self.starting[name] = self.launcher.launch(name, options)
        self._schedule_check()

    def _unknown(self, name: str) -> ServiceUnknown:
        offered = difflib.get_close_matches(name, list(self.registry), n=OFFER_SHOWN,
                                            cutoff=0.0)
        return ServiceUnknown(
            f"this broker has no worker for '{name}' and no model of that name to start; it "
            f"offers {', '.join(offered)}. A model of your own: put it in a models file "
            f"(ALL_MODELS) and start a worker with `mlipx serve {name} --models FILE`, or "
            f"restart the broker with `--models FILE`", name)

    # ------------------------------------------------------------ client definitions

    def define(self, body: list) -> list[bytes]:
        """``mmi.mlipx.define``: serve the model a client defines (protocol/
        model-definition.md 5). Answers 200 and the service that serves it (one of the
        registry's when it is defined alike, else one of its own, which workers are then
        started for), or 400/403 and why not."""
        if self.refuse_definitions:
            return [b"403", self.refuse_definitions.encode()]
        try:
            definition = Definition.from_json(json.loads(bytes(body[0]) if body else b""))
        except (ValueError, DefinitionError) as error:  # (JSON's errors are ValueErrors)
            return [b"400", f"not a model definition: {error}".encode()]
        name = self._serving(definition)
        if name is None:
            if len(self.by_clients) >= MAX_CLIENT_DEFINITIONS:
                return [b"403", f"this broker serves {MAX_CLIENT_DEFINITIONS} models that "
                                f"clients defined already; restart it for more".encode()]
            name = definition.own_service()
            self.by_clients[name] = definition
            self.definitions[name] = definition
            self.registry[name] = model_from(definition)
            log.info("serving '%s' as clients define it: %s", name, definition.short())
        return [b"200", name.encode()]

    def _serving(self, definition: Definition) -> str | None:
        """A service of the registry that is this definition, the definition's own name
        first."""
        for name in dict.fromkeys([definition.name, definition.own_service(),
                                   *sorted(self.definitions)]):
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
        if self.broker.service_workers(name):
            log.warning("an extra worker for '%s' failed to start: %s", name, why)
            return
        output = "" if start.log_path is None else \
            f" Last lines of its output ({start.log_path}):\n{tail(start.log_path)}"
        message = f"could not start model '{name}': {why}.{output}"
        log.error(message)
        self.broker.fail_queued(name, ServiceStartFailed(message, name))

    # ------------------------------------------------------------ status and stop

    def mmi_status(self, body: list) -> list[bytes]:
        now = time.monotonic()
        models = {name: self._describe(name, model) for name, model in self.registry.items()}
        status = {
            "autostart": True,
            "models": models,
            "starting": {name: now - s.started_at for name, s in self.starting.items()},
            "progress": {name: s.progress() for name, s in self.starting.items()},
            "start_timeout": self.config.start_timeout,
            "worker_timeout": self.config.worker_timeout,
            "max_workers": self.config.workers_per_model,
            "heartbeat": self.config.heartbeat,
            "batch_size": self.config.batch_size,
            "batch_wait": self.config.batch_wait,
            "prefetch": self.config.prefetch,
            "models_files": self.config.models_files,
            **self.launcher.status(),
        }
        return [json.dumps(status).encode()]

    def _describe(self, name: str, model: object) -> dict:
        definition = self.definitions.get(name)
        return {"extras": model_extras(model), "autostart": True,
                "defined_by": "client" if name in self.by_clients else "broker",
                "fingerprint": definition.fingerprint if definition else None,
                "definition": dict(definition.identity) if definition else None,
                "short": definition.short() if definition else None}

    def stop_all(self, grace: float = 10.0) -> None:
        """End every worker this broker started; called after the broker's loop ends."""
        self.launcher.stop_all(grace)


def admit_broker_key(clients: Path, secret_key_file: Path, scratch: Path) -> Path:
    """``clients`` if it admits the broker's own public key, else a copy of its keys plus
    that one, in a new directory under ``scratch`` (the caller removes it)."""
    public_key, _ = load_key_file(secret_key_file)
    if public_key in zmq.auth.load_certificates(clients):  # a bad file: ValueError
        return clients
    admitted = Path(tempfile.mkdtemp(prefix="curve-clients-", dir=scratch))
    for key_file in Path(clients).glob("*.key"):
        shutil.copy(key_file, admitted)
    own = admitted / "mlipx-autostart-broker.key"
    own.write_text(f'# the broker\'s own key, for the workers it starts\ncurve\n'
                   f'    public-key = "{public_key.decode()}"\n')
    return admitted


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(none: the file does not exist, so the worker never started)"
    except OSError as error:
        return f"(no output: {error})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"
