"""Scripts that share one model, as real processes: a single call is served beside a
map without waiting behind the map's queued requests, the broker's status shows each
script with where it runs, and a script that is killed or interrupted (Ctrl-C, its
process living on as a notebook's does) leaves nothing queued for the others."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest
from ase.build import bulk
from support import HELPERS

from mlipx_serve import RemoteCalculator

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MODELS = str(HELPERS / "models.py")  # sleepy-emt: 50 ms a call
MODEL = "sleepy-emt"


@pytest.fixture
def bus(serve_system) -> str:
    endpoint = serve_system.broker()
    serve_system.worker(MODEL, endpoint, "--models", MODELS)
    serve_system.wait_workers(endpoint, MODEL, 1)
    return endpoint


def clients_of(system, bus: str, pid: int) -> list[dict]:
    return [client for client in system.service(bus, MODEL).get("clients", [])
            if client["pid"] == pid]


def start_map(system, bus: str):
    """A script mapping 400 structures, 16 requests in flight: once 10 of them queue."""
    script = system.spawn("map", [sys.executable, str(HELPERS / "map_script.py"), bus, MODEL,
                                  "400", "16"])
    [shown] = system.wait_until(
        lambda: [c for c in clients_of(system, bus, script.pid) if c["queued"] >= 10],
        "the map's requests queued at the broker")
    return script, shown


def served(system, bus: str) -> int:
    return system.service(bus, MODEL)["served"]


def one_call(bus: str) -> float:
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.02, seed=3)
    with RemoteCalculator(MODEL, bus) as calc:
        atoms.calc = calc
        return atoms.get_potential_energy()


def test_a_single_call_waits_for_the_request_in_hand_not_for_the_map(serve_system, bus):
    script, shown = start_map(serve_system, bus)
    assert shown["host"] == socket.gethostname()[:64] and shown["in_flight"] == 1
    before = served(serve_system, bus)
    one_call(bus)
    # The request in hand, perhaps the one after it (the map's turn may have come between
    # the count and the call), and the call: not the 10 and more the map keeps queued.
    assert served(serve_system, bus) - before <= 3
    assert clients_of(serve_system, bus, script.pid)[0]["queued"] >= 5  # the map goes on


@pytest.mark.parametrize("how", ["killed", "interrupted"])
def test_a_script_gone_or_interrupted_leaves_nothing_queued(serve_system, bus, how):
    script, shown = start_map(serve_system, bus)
    os.kill(script.pid, signal.SIGKILL if how == "killed" else signal.SIGINT)
    if how == "interrupted":
        serve_system.wait_until(lambda: "interrupted" in script.log(), "the map interrupted")
    serve_system.wait_until(lambda: not any(c["queued"] for c in
                                            clients_of(serve_system, bus, script.pid)),
                            "the broker to drop the map's queued requests")
    assert serve_system.service(bus, MODEL)["abandoned"] >= shown["queued"] - 1
    before = served(serve_system, bus)
    one_call(bus)
    assert served(serve_system, bus) - before <= 2  # the one in hand, then the call
    assert script.alive() == (how == "interrupted")  # (a notebook lives on)
