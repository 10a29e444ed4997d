"""A pipe that lets any thread (or a signal handler) wake a loop blocked in ``zmq.poll``."""

from __future__ import annotations

import os
import threading


class Wakeup:
    """Register ``fileno()`` with a poller; ``wake()`` makes it readable until ``drain()``.

    ``wake`` may run in any thread while the loop's thread calls ``close``: the lock keeps
    a write from meeting a closed (or already reused) descriptor. It is re-entrant because
    a signal handler that wakes the loop may interrupt its own thread inside ``wake``.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.RLock()

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        with self._lock:
            if self._write < 0:
                return  # closed: nothing waits any more
            try:
                os.write(self._write, b"!")
            except BlockingIOError:
                pass  # the pipe is full, so a wake-up is pending anyway

    def drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            read, write = self._read, self._write
            self._read = self._write = -1  # first, for a signal handler that runs meanwhile
            if write >= 0:
                os.close(read)
                os.close(write)
