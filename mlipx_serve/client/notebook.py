"""Serve a model defined in Python (in a notebook or a script) to other scripts.

``serve_model(name, factory)`` pickles the factory with cloudpickle into a file that only
this user can read, in the private directory, and starts ``mlipx serve NAME --factory
FILE``: that worker reads the file once, deletes it, builds the calculator and serves it.
The factory never travels over the network, and nothing a socket delivered is unpickled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
from ase.calculators.calculator import Calculator

from mlipx_serve.broker.launchers import end_processes, serve_command
from mlipx_serve.client.broker_status import get_broker_status
from mlipx_serve.client.calculator import RemoteCalculator
from mlipx_serve.errors import ModelStartError
from mlipx_serve.wire.endpoints import chosen_broker, private_dir, worker_endpoint

Factory = Callable[[], Calculator]
POLL = 0.1


@dataclass
class FactoryModel:
    """A model whose calculator a Python function builds (what ``serve`` serves)."""

    factory: Factory
    name: str | None = None

    def build_local_calculator(self) -> Calculator:
        return self.factory()


@dataclass
class ModelProcess:
    """The worker process ``serve_model`` started; it serves until stopped, idle for its
    timeout, or the process that started it ends."""

    name: str
    broker: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def get_calculator(self, **kwargs: Any) -> RemoteCalculator:
        return RemoteCalculator(self.name, self.broker, **kwargs)

    def stop(self, grace: float = 10.0) -> None:
        """Let it finish the request in hand and leave; kill it after ``grace`` seconds."""
        end_processes([self.process], grace)

    def __enter__(self) -> ModelProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_model(name: str, factory: Factory, *, broker: str | None = None,
                idle_timeout: float | None = 300.0, start_timeout: float = 120.0,
                heartbeat: float = 2.5) -> ModelProcess:
    """Serve ``factory()``'s calculator as model ``name`` through the running broker.

    Returns once the worker has registered (or raises ``ModelStartError`` with the end
    of its output). ``idle_timeout`` None serves until ``stop()`` or this process ends.
    """
    if not name or name.startswith("mmi."):
        raise ValueError(f"{name!r} cannot name a model: names may not be empty or start "
                         f"with 'mmi.'")
    endpoint = chosen_broker(broker)
    if not get_broker_status(endpoint)["running"]:
        raise ModelStartError(f"no model broker answers at {endpoint}; start one with "
                              f"`mlipx serve-broker`")
    pickled = write_factory(factory)
    logs = private_dir() / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    command = [*serve_command(name), "--factory", str(pickled),
               "--broker", worker_endpoint(endpoint),
               "--timeout", str(idle_timeout or 0), "--heartbeat", str(heartbeat),
               "--exit-with", str(os.getpid()), "--no-uv"]
    with open(log_path, "ab") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    started = ModelProcess(name, endpoint, process, log_path)
    try:
        _wait_registered(started, start_timeout)
    except BaseException:
        started.stop(grace=2.0)
        raise
    finally:
        pickled.unlink(missing_ok=True)  # read by now, or never to be
    return started


def _wait_registered(started: ModelProcess, timeout: float) -> None:
    tag = f":{started.pid}:"
    deadline = time.monotonic() + timeout
    while True:
        status = get_broker_status(started.broker, timeout=1.0)
        workers = status["status"]["workers"] if status["running"] else []
        if any(w["service"] == started.name and tag in w["id"] for w in workers):
            return
        why = None
        if not started.alive():
            why = f"the worker exited with code {started.process.returncode}"
        elif time.monotonic() > deadline:
            why = f"the worker did not register within {timeout:g} s"
        if why is not None:
            from mlipx_serve.broker.autostart import tail

            raise ModelStartError(f"could not serve model '{started.name}': {why}. Last "
                                  f"lines of its output ({started.log_path}):\n"
                                  f"{tail(started.log_path)}")
        time.sleep(POLL)


# ------------------------------------------------------------ the factory file


def write_factory(factory: Factory) -> Path:
    """The pickled factory in a new file that only this user can read."""
    folder = private_dir() / "factories"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.pkl"
    data = _pickled(factory)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(data)
    return path


def load_factory(path: str | os.PathLike) -> Factory:
    """Read a factory file once (then delete it), if it is this user's and private."""
    path = Path(path)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"refusing to unpickle {path}: a factory file must belong to "
                              f"you and be readable by you alone (mode 0600)")
    data = path.read_bytes()
    path.unlink(missing_ok=True)
    return cloudpickle.loads(data)


def _pickled(factory: Factory) -> bytes:
    """cloudpickle by value for the user's own code (a module outside this environment,
    such as a script or a test beside the data), by reference for installed packages."""
    module = sys.modules.get(getattr(factory, "__module__", None) or "")
    by_value = module is not None and module.__name__ != "__main__" and _users_own(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(factory)
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _users_own(module: ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    if not file:
        return False
    path = Path(file).resolve()
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return not any(path.is_relative_to(root) for root in installed)
