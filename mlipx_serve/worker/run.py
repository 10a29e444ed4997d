"""A model worker's life: load the model once, then serve it on the bus through one or
more connections (batching, prefetching), say what happens with its broker, and leave
when idle, when told to, or when what it serves for is gone."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from mdp.signals import stop_on_signals
from mdp.worker import Worker
from mlipx_serve.errors import DefinitionError
from mlipx_serve.models.definitions import definition_of, resolve_device, serving_settings
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.endpoints import broker_command
from mlipx_serve.wire.serving import DEFAULTS as SERVING_DEFAULTS
from mlipx_serve.wire.serving import ServingSettings
from mlipx_serve.wire.worker_options import WorkerOptions
from mlipx_serve.worker.compute import build_calculator, settle_heap
from mlipx_serve.worker.handler import request_handler
from mlipx_serve.worker.watch import LeaveWhen, process_alive

log = logging.getLogger(__name__)
STARTED = time.time()  # about when this process started: mlipx serve imports this first

NO_BROKER_NOTICE = 3.0  # seconds without a broker before a worker says so (at least)
# Bytes of a definition that READY's metadata carries whole (it may hold 4096 in all);
# a longer one goes by its fingerprint alone.
MAX_DEFINITION_METADATA = 3000
Say = Callable[[str], None]


def serve(model: object, options: WorkerOptions, endpoint: str,
          curve: Mapping[str, Any] | None = None, leave_when: LeaveWhen | None = None,
          say: Say = log.info, served: Definition | None = None) -> None:
    """Load ``model`` and serve it at ``endpoint`` as ``options`` say, until it leaves.

    How it serves (``serving_of``): a batch size > 1 means that many connections, their
    requests evaluated in batches; ``prefetch`` that many more connections, whose requests
    wait in this process while the model computes, so that the next one is here when it
    is done (the broker sends to them only when no other process is free: protocol/mdp.md
    6). ``curve``: the Worker's CURVE keyword arguments; ``options.exit_with``: a pid whose
    end ends this worker too; ``leave_when()``: asked every second, a reason to leave or
    None (the broker of a SLURM job is gone: ``watch.BrokerWatch``); ``say(line)``: what
    a person watching the worker reads (``BrokerNews``), and why it leaves. ``served``:
    the definition it was started with (a client's), which it keeps, never computing its
    own here; else the model's own (a models file's, computed as the broker did)."""
    name = options.model
    settings = serving_of(model, options)
    log.info("loading model '%s'", name)
    served = served or definition_of(model)
    calc = build_calculator(model)
    changed = served.changed_files() if served is not None else []
    if changed:
        raise DefinitionError(f"{', '.join(changed)} changed since model '{name}' was "
                              f"defined, so the model loaded is not that one; ask for it "
                              f"again (a request made now defines the files as they are)")
    settle_heap()
    log.info("model '%s' loaded; serving it at %s (%s)", name, endpoint, settings)
    handler = request_handler(calc, name, served, settings.batch_size, settings.batch_wait,
                              settings.prefetch)
    metadata = worker_metadata(model, served)
    news = BrokerNews(name, endpoint, say, patience=max(NO_BROKER_NOTICE, 2 * options.heartbeat))
    workers = [Worker(endpoint, name, handler, idle_timeout=settings.worker_timeout or None,
                      heartbeat_interval=options.heartbeat, copy=False, metadata=metadata,
                      on_registration=news if n == 0 else None, **(curve or {}))
               for n in range(settings.batch_size + settings.prefetch)]
    reasons = [] if leave_when is None else [leave_when]
    if options.exit_with is not None:
        reasons.append(ended(options.exit_with))
    if reasons:
        threading.Thread(target=_leave_when, args=(reasons, workers), daemon=True,
                         name="leave-when").start()
    try:
        if len(workers) == 1:
            workers[0].run()  # in this thread: it stops on SIGTERM/SIGINT itself
        else:
            _run_together(workers)
    finally:
        news.close()
    say(f"leaving: {next((w.stop_reason for w in workers if w.stop_reason), 'stopped')}")


def serving_of(model: object, options: WorkerOptions) -> ServingSettings:
    """How this worker serves: its command line's options, else the model's own settings,
    else the defaults (an autostarting broker gives its workers the model's settings over
    its own options on their command lines)."""
    return options.serving().over(serving_settings(model)).over(SERVING_DEFAULTS)


def ended(pid: int) -> LeaveWhen:
    return lambda: None if process_alive(pid) else f"process {pid} has ended"


class BrokerNews:
    """What a worker says of its broker: that none answers yet (after ``patience``
    seconds, while it keeps trying), that it is registered and serving, that it lost it.
    Called by the worker with each change (``Worker(on_registration=...)``)."""

    def __init__(self, name: str, endpoint: str, say: Say, patience: float):
        self.name, self.endpoint, self.say = name, endpoint, say
        self._nobody_yet = threading.Timer(patience, self._no_broker)
        self._nobody_yet.daemon = True
        self._nobody_yet.start()

    def __call__(self, registered: bool) -> None:
        self._nobody_yet.cancel()
        if registered:
            self.say(f"serving model '{self.name}': registered with the broker at "
                     f"{self.endpoint}")
        else:
            self.say(f"lost the broker at {self.endpoint}; trying again")

    def _no_broker(self) -> None:
        start = broker_command(self.endpoint)
        self.say(f"no broker answers at {self.endpoint} yet; still trying" +
                 (f" (start one with `{start}`)" if start else ""))

    def close(self) -> None:
        self._nobody_yet.cancel()


def _run_together(workers: list[Worker]) -> None:
    """Each connection in a thread of its own; SIGTERM/SIGINT stops them all."""
    threads = [threading.Thread(target=worker.run, name=f"mdp-worker-{n}")
               for n, worker in enumerate(workers)]
    with stop_on_signals(lambda reason: [worker.stop(reason) for worker in workers]):
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # join() with a timeout lets the signals in
                thread.join(0.5)


def worker_metadata(model: object = None, served: Definition | None = None) -> dict[str, Any]:
    """What the worker tells the broker about itself with READY (protocol/mdp.md 5.4),
    for ``mlipx serve-status``: where it runs, on which device, in which SLURM job, since
    when, which model definition it serves (protocol/model-definition.md 4); and, for the
    broker, which connections are one process (a batching or prefetching worker's)."""
    host, pid = socket.gethostname(), os.getpid()
    metadata = {"host": host, "pid": pid, "device": _device(model),
                "slurm_job": os.environ.get("SLURM_JOB_ID"), "process": f"{host}:{pid}",
                "started": STARTED, "fingerprint": served.fingerprint if served else None}
    if served is not None and len(served.canonical) <= MAX_DEFINITION_METADATA:
        metadata["definition"] = served.identity
    return metadata


def _device(model: object) -> str | None:
    """The GPUs this process may use: SLURM's numbers of the node's GPUs, which stay
    the node's own where CUDA_VISIBLE_DEVICES is renumbered from 0, else the latter;
    without either, the device the model's definition names (``cuda``, ``cpu``), else
    ``cpu`` where no GPU framework is loaded (EMT, LJ) and None (unknown) where one is."""
    gpus = os.environ.get("SLURM_JOB_GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus is not None:
        return "cpu" if gpus.strip() in ("", "-1", "NoDevFiles") else f"GPU {gpus}"
    named = resolve_device(getattr(model, "device", None))
    if isinstance(named, str) and named:  # (json sends a str Enum's value)
        return named
    return None if {"torch", "jax"} & sys.modules.keys() else "cpu"


def _leave_when(reasons: list[LeaveWhen], workers: list[Worker], every: float = 1.0) -> None:
    while True:
        why = next((why for why in (reason() for reason in reasons) if why), None)
        if why:
            break
        time.sleep(every)
    log.info("%s; leaving after the request in hand", why)
    for worker in workers:
        worker.stop(why)
