"""A pipe that lets any thread (or a signal handler) wake a loop blocked in ``zmq.poll``."""

from __future__ import annotations

import os


class Wakeup:
    """Register ``fileno()`` with a poller; ``wake()`` makes it readable until ``drain()``."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        if self._write < 0:
            return  # closed: nothing waits any more, and the fd number may be reused
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
        if self._write >= 0:
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1
