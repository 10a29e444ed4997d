"""Serving settings per model: batching, worker limits and idle timeouts set where the model
is defined, over the broker's options, under a worker's own command line."""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from ase.calculators.emt import EMT
from support import HELPERS, copper_cells

from mlipx_serve import RemoteCalculator, evaluate

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = pytest.mark.timeout(180)

MODELS = HELPERS / "serving_models.py"
MLIPX = [sys.executable, "-m", "mlipx_serve.cli"]
EXACT = 1e-12


def cells(count: int) -> list:
    return copper_cells(count, rattle=0.03)


def broker(system: ServeSystem, *options: str) -> str:
    """An autostarting broker that offers the models of serving_models.py."""
    endpoint = system.ipc("serving.ipc")
    system.spawn("broker", [*MLIPX, "serve-broker", "--autostart", "--path", endpoint,
                            "--models", str(MODELS), "--heartbeat", "0.3", *options],
                 PYTHONPATH=str(HELPERS))
    system.wait_until(lambda: system.status(endpoint)["running"], "the broker")
    return endpoint


def connections(system: ServeSystem, bus: str, model: str) -> list[int]:
    """How many connections each worker process of ``model`` holds (its batch size plus
    what it prefetches), sorted."""
    processes = Counter(w["metadata"]["process"] for w in system.workers_of(bus, model))
    return sorted(processes.values())


def assert_emt(given, got) -> None:
    local = given.copy()
    local.calc = EMT()
    assert got.get_potential_energy() == pytest.approx(local.get_potential_energy(), abs=EXACT)


def test_one_broker_serves_a_batching_model_and_a_plain_one(serve_system: ServeSystem):
    bus = broker(serve_system)
    inputs = cells(64)  # one a request: the batches are the worker's own doing
    batched = evaluate("batched", inputs, broker=bus, max_in_flight=64, progress=False,
                       chunk_size=1)
    plain = evaluate("plain", inputs[:16], broker=bus, max_in_flight=16, progress=False,
                     chunk_size=1)
    for given, got in zip(inputs, batched, strict=True):
        assert_emt(given, got)
    calls = {got.calc.results["batch_call"] for got in batched}
    assert len(calls) <= 8  # 64 in flight, 16 a batch
    assert max(got.calc.results["batch_size"] for got in batched) > 1
    assert not any("batch_call" in got.calc.results for got in plain)  # never in batches
    assert connections(serve_system, bus, "batched") == [16]
    assert connections(serve_system, bus, "plain") == [1]
    status = json.loads(serve_system.run(*MLIPX, "serve-status", "--json", "--broker",
                                         bus).stdout)
    models = status["autostart"]["models"]
    assert models["batched"]["serving"] == {"batch_size": 16, "batch_wait": 0.2,
                                            "max_workers": 1, "prefetch": 0, "gpus": "all",
                                            "worker_timeout": 300.0}
    assert models["plain"]["serving"]["batch_size"] == 1
    assert models["limited"]["max_workers"] == 2
    table = serve_system.run(*MLIPX, "serve-status", "--broker", bus).stdout
    assert "batch 16 (0.2 s), 1 worker" in " ".join(table.split())


def test_a_models_worker_limit_holds_under_a_long_map(serve_system: ServeSystem):
    bus = broker(serve_system, "--max-workers-per-model", "3")  # the model says 2
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(len(connections(serve_system, bus, "limited")))
            done.wait(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        inputs = cells(80)
        got = evaluate("limited", inputs, broker=bus, max_in_flight=32, progress=False)
    finally:
        done.set()
        watcher.join()
    for given, result in zip(inputs, got, strict=True):
        assert_emt(given, result)
    assert max(seen) == 2  # more were wanted (32 in flight), the model allows 2


def test_a_workers_command_line_over_the_model_over_the_broker(serve_system: ServeSystem):
    bus = broker(serve_system, "--batch-size", "2")  # for the models that do not say
    for model in ("plain", "batched"):
        with RemoteCalculator(model, bus, timeout=60) as calc:
            atoms = cells(1)[0]
            atoms.calc = calc
            atoms.get_potential_energy()
    serve_system.wait_until(lambda: connections(serve_system, bus, "batched") == [16],
                            "the batching worker's 16 connections")
    assert connections(serve_system, bus, "plain") == [2]  # the broker's option
    serve_system.spawn("by-hand", [*MLIPX, "serve", "batched", "--models", str(MODELS),
                                   "--broker", bus, "--batch-size", "4", "--heartbeat", "0.3",
                                   "--no-uv"], PYTHONPATH=str(HELPERS))
    serve_system.wait_until(lambda: connections(serve_system, bus, "batched") == [4, 16],
                            "a worker with the batch size of its own command line")


def test_a_model_that_names_its_gpus_gets_workers_there_alone(serve_system: ServeSystem):
    bus = broker(serve_system, "--gpus", "0,1")
    got = evaluate("on-gpu-1", cells(60), broker=bus, max_in_flight=16, progress=False)
    assert {result.calc.results["gpu"] for result in got} == {"1"}
    models = serve_system.status(bus)["autostart"]["models"]
    assert (models["on-gpu-1"]["devices"], models["on-gpu-1"]["max_workers"]) == (["1"], 2)
    assert (models["limited"]["devices"], models["limited"]["max_workers"]) == (["0", "1"], 4)
