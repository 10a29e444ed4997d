"""SIGINT and SIGTERM as a request to stop, for the loops of a broker or a worker."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM call ``stop("got SIGTERM")`` (the reason names
    the signal); on leaving it, the handlers that were there before are back.

    Python runs signal handlers in the main thread only, and lets no other thread set one:
    elsewhere this does nothing, and whoever owns the main thread stops the loop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def on_signal(signum: int, frame: object) -> None:
        stop(f"got {signal.Signals(signum).name}")

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler set outside Python, which Python cannot set back
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
