"""The broker's bookkeeping per request, as workers, queued requests and clients grow: the
pure core (``mdp.core.BrokerCore``), no sockets, so that only its own cost shows.

Each setting registers W workers, keeps them busy, and queues Q requests from C clients
(each a ``share:`` client with connections of its own, as the client libraries name them,
or plain connections); then, K times over, a worker answers (its reply relayed, the next
request in turn handed to it) and a new request arrives at the back. The figure is the
time of one such step: with O(1) bookkeeping it stays flat however large W, Q and C grow.
With ``--baseline REV`` the core as it was at git revision REV runs the same steps, in a
process of its own, beside this one's.

    python bench/core_scaling.py                     # about a minute
    python bench/core_scaling.py --baseline HEAD~3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [(10, 0, 1), (10_000, 0, 1), (10, 100_000, 1), (10, 100_000, 1000),
            (10_000, 100_000, 1000)]  # (workers, queued, clients)


def steps(workers: int, queued: int, clients: int, count: int) -> float:
    """Seconds per step (a reply, a dispatch, a new request) in the given setting."""
    from mdp import protocol as p
    from mdp.core import BrokerConfig, BrokerCore

    core = BrokerCore(BrokerConfig(queue_limit=None, request_expiry=None,
                                   heartbeat_interval=1e9), 0.0)
    v02 = p.Dialect.V02
    for n in range(workers):
        core.handle(b"w%d" % n, p.worker_ready(v02, b"svc"), 0.0)
    held: dict[bytes, bytes] = {}  # worker -> the id of the request it holds
    connection = 0

    def request() -> None:
        nonlocal connection
        connection += 1
        client = b"share:c%d/%d" % (connection % clients, connection)
        for peer, frames in core.handle(client, p.client_request(v02, b"svc", [b"x"]), 0.0):
            if peer in core.workers:
                held[peer] = p.parse_worker_message(v02, frames).address

    for _ in range(workers + queued):
        request()
    started = time.perf_counter()
    for _ in range(count):
        worker, address = held.popitem()
        for peer, frames in core.handle(worker, p.worker_reply(v02, address, [b"y"], True),
                                        0.0):
            if peer in core.workers:
                held[peer] = p.parse_worker_message(v02, frames).address
        request()
    return (time.perf_counter() - started) / count


def run_settings(tree: str | None, count: int) -> list[float]:
    """This checkout's core (``tree`` None) or another's, in a process of its own."""
    env = dict(os.environ, PYTHONPATH=tree or str(ROOT))
    done = subprocess.run([sys.executable, __file__, "--measure", str(count)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps([steps(*setting, args.measure) for setting in SETTINGS]))
        return
    systems = {"now": None}
    with tempfile.TemporaryDirectory() as scratch:
        if args.baseline:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "mdp"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", scratch], input=archive, check=True)
            systems["baseline"] = scratch
        results = {name: [] for name in systems}
        for _ in range(args.repetitions):
            for name, tree in systems.items():
                results[name].append(run_settings(tree, args.steps))
    print(f"\nus per step (a reply, the next request handed out, a new one queued), medians "
          f"of {args.repetitions}")
    print(f"{'workers':>8}{'queued':>9}{'clients':>9}" +
          "".join(f"{name:>11}" for name in systems))
    for index, (workers, queued, clients) in enumerate(SETTINGS):
        cells = "".join(f"{statistics.median(r[index] for r in runs) * 1e6:>11.1f}"
                        for runs in results.values())
        print(f"{workers:>8}{queued:>9}{clients:>9}{cells}")


if __name__ == "__main__":
    main()
