"""Serve a model defined in Python (in a notebook or a script) to other scripts.

``serve_model(name, factory)`` pickles the factory with cloudpickle into a file that only
this user can read, in the private directory, and starts ``mlipx serve NAME --factory
FILE``: that worker reads the file once, deletes it, builds the calculator and serves it.
The factory never travels over the network, and nothing a socket delivered is unpickled.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlipx_serve.client.broker_status import get_broker_status
from mlipx_serve.client.calculator import RemoteCalculator
from mlipx_serve.errors import ModelStartError
from mlipx_serve.processes import end_processes, start_logged, tail
from mlipx_serve.wire.endpoints import chosen_broker, worker_endpoint
from mlipx_serve.wire.factory_file import Factory, write_factory
from mlipx_serve.wire.private import private_dir
from mlipx_serve.wire.worker_options import WorkerOptions

POLL = 0.1

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
    log_path = private_dir() / "logs" / \
        f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    options = WorkerOptions(name, broker=worker_endpoint(endpoint), factory=str(pickled),
                            timeout=idle_timeout or 0, heartbeat=heartbeat,
                            exit_with=os.getpid(), no_uv=True)
    started = ModelProcess(name, endpoint, start_logged(options.command(), log_path),
                           log_path)
    try:
        _wait_registered(started, start_timeout)
    except BaseException:
        started.stop(grace=2.0)
        raise
    finally:
        pickled.unlink(missing_ok=True)  # read by now, or never to be
    return started


def _wait_registered(started: ModelProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = get_broker_status(started.broker, timeout=1.0)
        workers = status["status"]["workers"] if status["running"] else []
        if any(w["service"] == started.name and (w.get("metadata") or {}).get("pid") ==
               started.pid for w in workers):
            return
        why = None
        if not started.alive():
            why = f"the worker exited with code {started.process.returncode}"
        elif time.monotonic() > deadline:
            why = f"the worker did not register within {timeout:g} s"
        if why is not None:
            raise ModelStartError(f"could not serve model '{started.name}': {why}. Last "
                                  f"lines of its output ({started.log_path}):\n"
                                  f"{tail(started.log_path)}")
        time.sleep(POLL)
