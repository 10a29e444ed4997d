"""``stop_on_signals``: SIGINT and SIGTERM stop a loop in the main thread (real processes,
helpers/signalled.py), and nothing happens in any other thread."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import pytest

from mdp.signals import STOP_SIGNALS, stop_on_signals

pytestmark = pytest.mark.timeout(60)

SIGNALLED = Path(__file__).parent / "helpers" / "signalled.py"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("mode", ["block", "broker", "worker"])
def test_a_signal_stops_the_loop_with_a_reason_that_names_it(mdp_system, mode, signum):
    args = [] if mode == "block" else [mdp_system.ipc("bus")]
    proc = mdp_system.spawn(mode, [sys.executable, str(SIGNALLED), mode, *args])
    mdp_system.wait_until(lambda: "ready" in proc.log(), f"{proc} to be ready")
    proc.signal(signum)
    assert proc.wait() == 0, proc.log()
    lines = proc.log().splitlines()
    assert f"stopped: got {signum.name}" in lines, lines
    assert "handlers restored" in lines, lines


def test_in_another_thread_it_does_nothing():
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    seen: list[dict] = []

    def in_thread() -> None:
        with stop_on_signals(lambda reason: None):
            seen.append({signum: signal.getsignal(signum) for signum in STOP_SIGNALS})

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert seen == [before]
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before
