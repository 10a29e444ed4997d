"""Why a worker should leave, asked every second: the process it serves for has ended (its
broker's, a notebook's), or the broker of a worker started on another machine is gone."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from mdp.client import ask
from mdp.errors import MDPError
from mdp.security import ClientCurve
from mlipx_serve.wire.connection import Connection, names_broker

LeaveWhen = Callable[[], "str | None"]
PROBE_EVERY = 5.0  # seconds between a worker's questions to a broker on another machine


def process_alive(pid: int) -> bool:
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


class BrokerWatch:
    """Why a worker started for a broker on another machine should leave, or None.

    Its connection file is gone or names another broker (the broker stopped), or the
    broker has not answered for ``orphan_timeout`` seconds (killed, or its machine gone):
    no process id to watch across machines, so it asks the broker itself, every few
    seconds, what any client may ask (``mmi.service``).
    """

    def __init__(self, path: Path, connection: Connection, orphan_timeout: float):
        self.path = path
        self.connection = connection
        self.curve = ClientCurve(*connection.keys())
        self.orphan_timeout = orphan_timeout
        self.probe_every = min(PROBE_EVERY, orphan_timeout / 3)
        self._heard = self._next_probe = time.monotonic()

    def __call__(self) -> str | None:
        if not names_broker(self.path, self.connection.broker_id):
            return (f"the connection file {self.path} is gone or names another broker: "
                    f"broker {self.connection.broker_id} has stopped")
        now = time.monotonic()
        if now >= self._next_probe:
            if self._answers():
                self._heard = time.monotonic()
            self._next_probe = time.monotonic() + self.probe_every
        if now - self._heard > self.orphan_timeout:
            return (f"broker {self.connection.broker_id} at {self.connection.endpoint} has not "
                    f"answered for {now - self._heard:.0f} s (--orphan-timeout "
                    f"{self.orphan_timeout:g})")
        return None

    def _answers(self) -> bool:
        try:
            ask(self.connection.endpoint, "mmi.service", "mmi.status",
                timeout=max(0.5, self.probe_every), curve=self.curve)
            return True
        except MDPError:
            return False
