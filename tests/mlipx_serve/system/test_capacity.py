"""A broker's limit of worker processes, over all its models, as real processes: at the
limit an idle worker of the model used least lately leaves to make room, and requests wait
in the queue, saying so, while no worker is idle."""

from __future__ import annotations

import threading

import pytest
from ase.build import bulk
from support import HELPERS

from mlipx_serve import RemoteCalculator, evaluate

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MODELS = str(HELPERS / "models.py")


def energy(model: str, bus: str) -> float:
    atoms = bulk("Cu", cubic=True)
    with RemoteCalculator(model, bus, timeout=120) as calc:
        atoms.calc = calc
        return atoms.get_potential_energy()


def autostart(system, bus: str) -> dict:
    return system.status(bus)["autostart"]


def test_at_the_limit_an_idle_worker_makes_room_and_a_busy_one_makes_requests_wait(
        serve_system):
    bus = serve_system.broker("--autostart", "--models", MODELS, "--max-workers", "1")
    energy("emt", bus)
    energy("sleepy-emt", bus)  # emt's worker, idle, leaves for it
    serve_system.wait_until(lambda: not serve_system.service(bus, "emt")["workers"],
                            "emt's worker to leave")
    shown = autostart(serve_system, bus)
    assert shown["worker_limit"] == 1 and shown["retired"] == {"emt": 1}

    busy = threading.Thread(target=evaluate, args=("sleepy-emt", [bulk("Cu")] * 120),
                            kwargs={"broker": bus, "chunk_size": 1, "max_in_flight": 2})
    busy.start()  # sleepy-emt's worker busy, a request always queued behind: not idle
    try:
        serve_system.wait_until(lambda: serve_system.service(bus, "sleepy-emt")["queued"],
                                "the map to keep sleepy-emt's worker busy")
        waiting = threading.Thread(target=energy, args=("emt", bus))
        waiting.start()
        serve_system.wait_until(lambda: autostart(serve_system, bus)["waiting_for_room"] ==
                                ["emt"], "emt to wait for room")
        assert serve_system.service(bus, "emt")["queued"] == 1
    finally:
        busy.join(120)
    waiting.join(120)  # the map done, its worker idle: it leaves, emt's starts
    assert not waiting.is_alive()
    shown = autostart(serve_system, bus)
    assert shown["retired"] == {"emt": 1, "sleepy-emt": 1} and shown["waiting_for_room"] == []
    assert serve_system.service(bus, "emt")["served"] == 2
