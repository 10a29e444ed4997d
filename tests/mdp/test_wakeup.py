"""The wake-up pipe that other threads (and signal handlers) use to wake a poll loop."""

from __future__ import annotations

import threading

from mdp.wakeup import Wakeup


def race_wake_against_close(wakeup: Wakeup, threads: int = 4) -> list[OSError]:
    """Wake from several threads while the main thread closes; the errors they met."""
    start = threading.Barrier(threads + 1)
    errors: list[OSError] = []

    def hammer() -> None:
        start.wait()
        try:
            for _ in range(2000):
                wakeup.wake()
        except OSError as error:
            errors.append(error)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for thread in workers:
        thread.start()
    start.wait()
    wakeup.close()
    for thread in workers:
        thread.join(10)
    return errors


def test_wake_and_close_from_different_threads_never_meet_a_closed_pipe():
    for _ in range(20):
        wakeup = Wakeup()
        assert race_wake_against_close(wakeup) == []
    wakeup.wake()  # after close: nothing, and no error
