"""How an autostarting broker starts a worker: the interface its launchers share.

A launcher starts a worker at once (a local process, or a SLURM job) and gives the
Autostarter a ``Launch`` it can look at from the broker's loop at any time without
blocking: ``ended()`` says why a worker ended (None while it is on its way or runs),
``progress()`` what it is doing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mlipx_serve import environment
from mlipx_serve.wire.worker_options import WorkerOptions


class Launch(Protocol):
    model: str
    started_at: float
    log_path: Path | None  # the worker's output, once there is a place for it

    def ended(self) -> str | None:
        """Why it ended ("the worker exited with code 1"); None while on its way or up."""

    def progress(self) -> str:
        """What it is doing now, for clients that wait for it."""

    def timed_out(self, seconds: float) -> str:
        """Why it is given up after ``seconds`` without registering."""


class Launcher(Protocol):
    def launch(self, options: WorkerOptions, gpus: Sequence[str] = (),
               threads: int | None = None) -> Launch:
        """Start a worker with ``options`` (and ``options(options)``'s), on one of ``gpus``
        if given, with ``threads`` CPU threads if given; at once."""

    def options(self, options: WorkerOptions) -> WorkerOptions:
        """``options`` with how a worker it starts finds the broker."""

    def stop(self, launch: Launch) -> None:
        """End it without waiting for it."""

    def running(self) -> int:
        """Worker processes (or jobs) it started that have not ended, starting ones too."""

    def started_it(self, metadata: dict) -> bool:
        """Whether the worker whose READY said ``metadata`` is one it started."""

    def retire(self, metadata: dict) -> bool:
        """Ask the idle worker whose READY said ``metadata`` to leave; False if it cannot."""

    def busy(self) -> bool:
        """Does it still have workers or jobs to look after?"""

    def status(self) -> dict[str, Any]:
        """Its fields of the broker's ``ServingStatus`` (wire/status.py)."""

    def stop_all(self, grace: float) -> None:
        """End everything it started; called once the broker's loop has ended."""


def worker_env() -> dict[str, str]:
    """The broker's environment, without the CURVE keys or connection file meant for its
    clients: a started worker uses exactly what its command line gives."""
    return {key: value for key, value in os.environ.items()
            if key not in (*environment.CURVE, environment.CONNECT)}
