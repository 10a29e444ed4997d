"""Batching and prefetching workers behind a real broker: batches formed, failures alone,
the broker's choice of connection, autostart's counts."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from support import HELPERS

from mlipx_serve import evaluate

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = pytest.mark.timeout(120)


MODELS = HELPERS / "batch_models.py"


EXACT = 1e-12


def cells(count: int) -> list[Atoms]:
    found = []
    for i in range(count):
        atoms = bulk("Cu", cubic=True) * (1 + i % 2, 1, 1)
        atoms.rattle(0.03, seed=i)
        found.append(atoms)
    return found


def assert_emt(given: Atoms, got: Atoms) -> None:
    local = given.copy()
    local.calc = EMT()
    assert got.get_potential_energy() == pytest.approx(local.get_potential_energy(), abs=EXACT)
    np.testing.assert_allclose(got.get_forces(), local.get_forces(), rtol=0, atol=EXACT)


def batched_worker(system: ServeSystem, model: str, size: int, wait: float) -> str:
    bus = system.broker()
    system.worker(model, bus, "--models", str(MODELS), "--batch-size", str(size),
                  "--batch-wait", str(wait))
    system.wait_workers(bus, model, size)  # one connection per place in the batch
    return bus


@pytest.mark.parametrize("chunk_size", [1, 4, None])  # a structure a request, or chunks
def test_sixty_four_in_flight_go_in_a_few_batches_of_sixteen(serve_system: ServeSystem,
                                                              chunk_size: int | None):
    bus = batched_worker(serve_system, "counting-emt", 16, 0.2)
    inputs = cells(64)
    got = evaluate("counting-emt", inputs, broker=bus, max_in_flight=64,
                   chunk_size=chunk_size)
    for given, result in zip(inputs, got, strict=True):
        assert_emt(given, result)
    calls = {int(result.calc.results["batch_call"]) for result in got}
    sizes = [int(result.calc.results["batch_size"]) for result in got]
    assert len(calls) <= 8 and max(sizes) == 16


def test_a_structure_that_fails_in_a_batch_fails_alone(serve_system: ServeSystem):
    bus = batched_worker(serve_system, "counting-emt", 8, 0.2)
    inputs = cells(7)
    inputs.insert(3, Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]]))
    got = evaluate("counting-emt", inputs, broker=bus, on_error="keep")
    assert "No EMT-potential for U" in got[3].info["error"]
    for given, result in zip(inputs[:3] + inputs[4:], got[:3] + got[4:], strict=True):
        assert_emt(given, result)


def test_a_model_without_calculate_batch_is_served_one_after_another(serve_system):
    bus = serve_system.broker()
    worker = serve_system.worker("emt", bus, "--batch-size", "4")
    serve_system.wait_workers(bus, "emt", 4)
    inputs = cells(12)
    for given, result in zip(inputs, evaluate("emt", inputs, broker=bus), strict=True):
        assert_emt(given, result)
    assert "has no calculate_batch" in worker.log()


def prefetching_worker(system: ServeSystem, bus: str) -> None:
    system.worker("one-at-a-time-emt", bus, "--models", str(MODELS), "--prefetch", "1")


def test_a_prefetching_worker_computes_one_at_a_time_and_keeps_results_apart(serve_system):
    bus = serve_system.broker()
    prefetching_worker(serve_system, bus)
    serve_system.wait_workers(bus, "one-at-a-time-emt", 2)
    workers = serve_system.workers_of(bus, "one-at-a-time-emt")
    assert len({worker["metadata"]["process"] for worker in workers}) == 1
    inputs = cells(24)
    got = evaluate("one-at-a-time-emt", inputs, broker=bus, max_in_flight=8)
    for given, result in zip(inputs, got, strict=True):
        assert_emt(given, result)  # the model fills one array in place: copies went out
    assert {worker["served"] for worker in serve_system.workers_of(bus, "one-at-a-time-emt")} \
        != {0}


def test_the_broker_gives_a_prefetching_workers_spare_only_when_no_process_is_free(
        serve_system):
    bus = serve_system.broker()
    for _ in range(2):
        prefetching_worker(serve_system, bus)
    serve_system.wait_workers(bus, "one-at-a-time-emt", 4)
    for _ in range(3):
        got = evaluate("one-at-a-time-emt", cells(2), broker=bus, max_in_flight=2,
                       chunk_size=1)  # (both at once: no first request alone)
        assert len({result.calc.results["pid"] for result in got}) == 2


def test_autostart_passes_prefetch_on_and_counts_worker_processes_not_connections(
        serve_system):
    bus = serve_system.broker("--autostart", "--models", str(MODELS), "--prefetch", "1",
                              "--max-workers-per-model", "2")
    inputs = cells(40)
    for given, result in zip(inputs, evaluate("one-at-a-time-emt", inputs, broker=bus,
                                              max_in_flight=8), strict=True):
        assert_emt(given, result)
    serve_system.wait_workers(bus, "one-at-a-time-emt", 4)  # two processes, two each
    workers = serve_system.workers_of(bus, "one-at-a-time-emt")
    assert len({worker["metadata"]["process"] for worker in workers}) == 2


def test_gpus_share_out_the_autostarted_workers(serve_system: ServeSystem):
    bus = serve_system.broker("--autostart", "--models", str(MODELS), "--gpus", "0,1",
                              "--max-workers-per-model", "1")
    got = evaluate("gpu-emt", cells(80), broker=bus, max_in_flight=16)
    assert {result.calc.results["gpu"] for result in got} == {"0", "1"}
    share = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 2))
    assert {result.calc.results["threads"] for result in got} == {share}  # two workers
    run = serve_system.run(*[__import__("sys").executable, "-m", "mlipx_serve.cli"],
                           "serve-status", "--broker", bus, "--json")
    workers = json.loads(run.stdout)["status"]["workers"]
    assert sorted(worker["metadata"]["device"] for worker in workers) == ["GPU 0", "GPU 1"]

