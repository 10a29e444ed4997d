"""A process that waits in ``stop_on_signals`` for a test to send it SIGINT or SIGTERM.

    signalled.py block            -> the context manager around a wait
    signalled.py broker ENDPOINT  -> Broker.run in the main thread
    signalled.py worker ENDPOINT  -> Worker.run in the main thread (no broker needed)

It prints "ready" once the handlers are in place, then "stopped: REASON" and whether the
handlers of before are back, and exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading

from mdp.broker import Broker
from mdp.signals import STOP_SIGNALS, stop_on_signals
from mdp.worker import Worker

WAIT = 60.0  # the test sends its signal long before


def say(text: str) -> None:
    print(text, flush=True)


def wait_in_block() -> str:
    stopped = threading.Event()
    reasons: list[str] = []
    with stop_on_signals(lambda reason: (reasons.append(reason), stopped.set())):
        say("ready")
        stopped.wait(WAIT)
    return reasons[0] if reasons else "no signal came"


def run_broker(endpoint: str) -> str:
    broker = Broker(endpoint)
    threading.Thread(target=lambda: broker.ready.wait(WAIT) and say("ready"),
                     daemon=True).start()
    broker.run()
    return broker.stop_reason


def run_worker(endpoint: str) -> str:
    worker = Worker(endpoint, "svc", lambda frames: frames)
    threading.Thread(target=lambda: worker.connected.wait(WAIT) and say("ready"),
                     daemon=True).start()
    worker.run()
    return worker.stop_reason


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("the old SIGTERM handler"))
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    mode, *args = sys.argv[1:]
    reason = {"block": wait_in_block, "broker": run_broker, "worker": run_worker}[mode](*args)
    say(f"stopped: {reason}")
    after = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    say("handlers restored" if after == before else f"handlers left: {after}")


if __name__ == "__main__":
    main()
