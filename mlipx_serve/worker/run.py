"""A model worker: load the calculator once, then answer ASE requests for it on the bus."""

from __future__ import annotations

import copy
import gc
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from mdp.worker import Worker
from mlipx_serve import environment
from mlipx_serve.errors import DefinitionError, DefinitionMismatch, ServeError
from mlipx_serve.models.changes import changes
from mlipx_serve.models.extras import EXTRAS, model_extras
from mlipx_serve.wire.definition import SHORT_FINGERPRINT, Definition, differences
from mlipx_serve.wire.endpoints import broker_command
from mlipx_serve.wire.payload import RequestedModel, encode_results, read_request

log = logging.getLogger(__name__)
STARTED = time.time()  # about when this process started: mlipx serve imports this first

NO_BROKER_NOTICE = 3.0  # seconds without a broker before a worker says so (at least)


def find_model(name: str, registry: Mapping[str, object]) -> object:
    try:
        return registry[name]
    except KeyError:
        raise ServeError(f"unknown model '{name}'. Known models: {', '.join(sorted(registry))}. "
                         f"Add it to a models.py file (ALL_MODELS) and pass --models") from None


Compute = Callable[[Atoms, list[str]], Mapping[str, Any]]
# Bytes of a definition that READY's metadata carries whole (it may hold 4096 in all);
# a longer one goes by its fingerprint alone.
MAX_DEFINITION_METADATA = 3000
LeaveWhen = Callable[[], "str | None"]
Say = Callable[[str], None]


def make_handler(compute_results: Compute, served: Definition | None) -> Callable[[list], list]:
    """Requests in, results out, for requests that ask for the ``served`` definition or
    name none. What a request raises (a ``PayloadError``, a ``DefinitionMismatch``, the
    model's own exception) the worker sends back as an MDP worker error, with the
    traceback: the broker counts it as failed, the client raises it typed, and the worker
    goes on."""

    def handle(frames: list) -> list:
        atoms, properties, asked = read_request(frames)
        if asked is not None and (served is None or asked.fingerprint != served.fingerprint):
            raise DefinitionMismatch(mismatch_message(served, asked))
        # The reply's frames are views of the calculator's own arrays, which it may fill
        # again for the next structure: safe, as MDP gives a connection its next request
        # only after its reply has reached the broker.
        return encode_results(compute_results(atoms, properties))

    return handle


def mismatch_message(served: Definition | None, asked: RequestedModel) -> str:
    """Why a request for another model is refused, naming what differs."""
    wanted = asked.fingerprint[:SHORT_FINGERPRINT]
    if served is None:
        return (f"the request is for a model defined as {wanted}, but this worker serves a "
                f"model without a definition to compare (a Python function, or a models "
                f"file entry of a class of its own), so it takes only requests that name "
                f"no definition: ask for it by name alone")
    said = f"this worker serves {served.short()} ({served.fingerprint[:SHORT_FINGERPRINT]})" \
           f", not the model the request is for ({wanted})"
    if asked.identity is None:
        return said
    return f"{said}: {'; '.join(differences(served.identity, asked.identity)) or 'same fields'}"


def compute(calc: Calculator, atoms: Atoms, properties: list[str]) -> dict[str, Any]:
    """``calc.results`` for a request's atoms: the first property asked for computes them,
    a later one only when the results lack it (``get_property`` returns a copy of each
    array, thrown away here). ``build_calculator`` gives the calculator a cheap change
    check (``changes``) that counts the positions as moved without a look, since every
    request brings atoms of its own, and keeps what a calculator set up for the system
    when only they moved (EMT's neighbour lists: forgetting them cost 6 ms of 9 ms for
    32 atoms)."""
    for index, prop in enumerate(properties):
        if index == 0 or prop not in calc.results:
            calc.get_property(prop, atoms if index == 0 else None)
    return calc.results if properties else {}


def build_calculator(model: object) -> Calculator:
    """The model's local calculator, with a cheap change check (see ``compute``); a
    worker must never try to be served itself."""
    os.environ[environment.USE_SERVE] = "false"
    build = getattr(model, "build_local_calculator", None)
    calc = build() if build is not None else model.get_calculator()
    calc.check_state = lambda atoms, tol=None: changes(calc.atoms, atoms, assume_moved=True)
    return calc


def settle_heap() -> None:
    """Collect what loading the model left behind, and exempt the rest, the model, from
    later garbage collections: with CHGNet loaded a full collection scanned 300,000
    objects for 160 ms, and came every 20 or so structures, a pause in the middle of
    someone's request each time."""
    gc.collect()
    gc.freeze()


def serve(name: str, model: object, broker: str, idle_timeout: float | None,
          heartbeat: float = 2.5, curve: Mapping[str, Any] | None = None,
          exit_with: int | None = None, batch_size: int = 1, batch_wait: float = 0.01,
          prefetch: int = 0, leave_when: LeaveWhen | None = None,
          say: Say = log.info) -> None:
    """``curve``: the Worker's CURVE keyword arguments (``paths.curve_options``);
    ``exit_with``: a pid whose end ends this worker too (its broker's, or a notebook's);
    ``batch_size`` > 1: that many connections, their requests evaluated in batches;
    ``prefetch``: that many more connections, whose requests wait in this process while
    the model computes, so that the next one is here when it is done (the broker sends
    to them only when no other process is free: protocol/mdp.md 6);
    ``leave_when()``: asked every second, a reason to leave or None (e.g. the broker of
    a SLURM job is gone: ``connection.BrokerWatch``); ``say(line)``: what a person
    watching the worker reads (``BrokerNews``), and why it leaves."""
    log.info("loading model '%s'", name)
    served = served_definition(model)
    calc = build_calculator(model)
    settle_heap()
    log.info("model '%s' loaded; serving it at %s", name, broker)
    handler = request_handler(calc, name, served, batch_size, batch_wait, prefetch)
    metadata = worker_metadata(model, served)
    news = BrokerNews(name, broker, say, patience=max(NO_BROKER_NOTICE, 2 * heartbeat))
    workers = [Worker(broker, name, handler, idle_timeout=idle_timeout,
                      heartbeat_interval=heartbeat, copy=False, metadata=metadata,
                      on_registration=news if n == 0 else None, **(curve or {}))
               for n in range(batch_size + prefetch)]
    reasons = [] if leave_when is None else [leave_when]
    if exit_with is not None:
        reasons.append(lambda: None if _alive(exit_with) else f"process {exit_with} has ended")
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


def owned(results: Mapping[str, Any]) -> dict[str, Any]:
    """Copies of a calculator's results, which it may fill again for the next structure
    while these are still on their way (a reply's frames are views of its arrays)."""
    return {name: copy.copy(value) for name, value in results.items()}


def served_definition(model: object) -> Definition | None:
    """What the worker serves, checked against every request; None for a model without a
    definition (a Python function, a models file entry of a class of its own)."""
    define = getattr(model, "definition", None)
    if define is None:
        return None
    try:
        return define()
    except DefinitionError as error:
        log.warning("model has no definition to check requests against (%s); it takes "
                    "only requests by name alone", error)
        return None


def request_handler(calc: Calculator, name: str, served: Definition | None = None,
                    batch_size: int = 1, batch_wait: float = 0.01,
                    prefetch: int = 0) -> Callable[[list], list]:
    """What each of a worker's connections calls with a request's frames (see ``serve``)."""
    if batch_size > 1:
        return make_handler(_batched(calc, name, batch_size, batch_wait), served)
    if not prefetch:
        return make_handler(lambda atoms, properties: compute(calc, atoms, properties),
                            served)
    # Several connections, one calculator: one request at a time, decoding included (a
    # waiting request then takes no CPU from the one computed), and replies that carry
    # copies, as the calculator may fill its arrays again before a reply has gone out.
    handler = make_handler(lambda atoms, properties: owned(compute(calc, atoms, properties)),
                           served)
    lock = threading.Lock()

    def handle(frames: list) -> list:
        with lock:
            return handler(frames)

    return handle


def _batched(calc: Calculator, name: str, size: int, wait: float) -> Compute:
    from mlipx_serve.worker.batching import Batcher, batch_function

    evaluate, one_call = batch_function(calc)
    if not one_call:
        log.warning("model '%s' (%s) has no calculate_batch: --batch-size %d takes %d "
                    "requests at a time but computes them one after another", name,
                    type(calc).__name__, size, size)
    return Batcher(evaluate, size, wait).compute


def _run_together(workers: list[Worker]) -> None:
    """Each connection in a thread of its own; SIGTERM/SIGINT stops them all."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: [worker.stop(f"got {signal.Signals(signum).name}")
                                                  for worker in workers])
    threads = [threading.Thread(target=worker.run, name=f"mdp-worker-{n}")
               for n, worker in enumerate(workers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # join() with a timeout lets the signals in
                thread.join(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    from mlipx_serve.models.definitions import resolve_device

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


def _alive(pid: int) -> bool:
    """Is ``pid`` running? A zombie is not: a broker killed by SIGKILL stays one until
    its own parent reaps it."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or its pid now someone else's
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: kill(pid, 0) is all there is to go by
    return state not in ("Z", "X")


# ------------------------------------------------------------ running under uv


def missing_modules(model: object) -> list[str]:
    """Top-level modules the model imports that this interpreter cannot find."""
    module = getattr(model, "module", None)
    if not module:
        return []
    top = module.split(".")[0]
    return [] if importlib.util.find_spec(top) is not None else [top]


def find_uv() -> str | None:
    """uv on PATH, else the one pip installed beside this Python (not always on PATH)."""
    found = shutil.which("uv")
    if found is not None:
        return found
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    try:
        return find_uv_bin()
    except FileNotFoundError:
        return None


def uv_command(extras: list[str], argv: list[str], cwd: Path | None = None) -> list[str]:
    """``uv run`` with the model's extras, then ``argv`` again with ``--no-uv``.

    Inside a project that defines the extras this is what mlipx's documentation shows:
    ``uv run --extra mace mlipx serve mace-mpa-0 --no-uv``. Elsewhere uv installs the
    extras' requirements by name into an environment layered over this Python.
    """
    uv = find_uv()
    if uv is None:
        requirements = " ".join(f"'{r}'" for extra in extras for r in EXTRAS.get(extra, []))
        raise ServeError(f"this model needs the extra(s) {', '.join(extras)}, which are not "
                         f"installed, and uv is not on PATH to install them. Install them "
                         f"with `pip install {requirements}` (or install uv), then run again")
    again = [*argv, "--no-uv"]
    if project_defines(extras, cwd or Path.cwd()):
        return [uv, "run", *(a for extra in extras for a in ("--extra", extra)), "mlipx", *again]
    requirements = [r for extra in extras for r in EXTRAS.get(extra, [extra])]
    with_args = [a for r in requirements for a in ("--with", r)]
    # "python" after "--" is the interpreter of uv's environment, which has the extras.
    return [uv, "run", "--no-project", "--python", sys.executable, *with_args, "--",
            "python", "-m", "mlipx_serve.cli", *again]


def project_defines(extras: list[str], start: Path) -> bool:
    """Is there a pyproject.toml above ``start`` whose optional dependencies name them all?"""
    try:
        import tomllib
    except ImportError:  # Python 3.10: fall back to naming the requirements
        return False
    for directory in (start, *start.parents):
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                return False
            defined = data.get("project", {}).get("optional-dependencies", {})
            return all(extra in defined for extra in extras)
    return False


def reexec_under_uv(model: object, argv: list[str]) -> None:
    """Replace this process with ``uv run ...`` when the model's packages are missing."""
    extras = model_extras(model)
    if not extras or not missing_modules(model):
        return
    command = uv_command(extras, argv)
    log.info("model needs %s; running under uv: %s", ", ".join(extras), " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
