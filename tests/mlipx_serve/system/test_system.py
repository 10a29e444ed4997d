"""System tests of mlipx_serve: brokers, workers and clients as real processes.

Everything goes over real ZeroMQ IPC sockets to real ``mlipx serve`` workers running ASE's
EMT, and is compared with EMT computed here. Processes are started and ended by the
fixtures in ``conftest.py``; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zmq
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import CalculationFailed, PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.mep import NEB
from ase.optimize import BFGS
from ase.units import fs
from support import HELPERS, load_module

import mdp.client
from mdp.errors import (
    BrokerStopping,
    BrokerUnavailable,
    ServiceStartFailed,
    WorkerError,
)
from mlipx_serve import (
    GenericASECalculator,
    Models,
    PayloadError,
    RemoteCalculationError,
    RemoteCalculator,
    ServingError,
    served_calculator_or_none,
)
from mlipx_serve.client import broker_status
from mlipx_serve.client.failures import remote_error
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.wire.endpoints import worker_endpoint

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = pytest.mark.timeout(120)

MODELS_FILE = HELPERS / "models.py"
MLIPX = [sys.executable, "-m", "mlipx_serve.cli"]
EXACT = 1e-12  # same code on the same numbers: the bus must not change a bit of them
SAME_PATH = 1e-10
WAIT_SECONDS = 30


rattled_cu = load_module(HELPERS / "client.py", "mlipx_serve_helper_client").rattled_cu


def remote(broker: str, model: str = "emt", timeout: float = 60.0) -> RemoteCalculator:
    return RemoteCalculator(model, broker, timeout=timeout)


def results_with(atoms: Atoms, calc) -> dict:
    """Energy, forces (and stress when periodic) of a copy of ``atoms`` under ``calc``."""
    atoms = atoms.copy()
    atoms.calc = calc
    found = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.any():
        found["stress"] = atoms.get_stress()
    return found


def assert_same_results(served: dict, local: dict) -> None:
    assert served.keys() == local.keys()
    for key, value in local.items():
        np.testing.assert_allclose(served[key], value, rtol=0, atol=EXACT, err_msg=key)


def assert_same_path(served: list, local: list) -> None:
    assert len(served) == len(local) > 1
    for step, (a, b) in enumerate(zip(served, local, strict=True)):
        np.testing.assert_allclose(a, b, rtol=0, atol=SAME_PATH, err_msg=f"step {step}")


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=3)
    return atoms


def strained_cu() -> Atoms:
    atoms = rattled_cu(11)
    atoms.set_cell(atoms.cell * [1.03, 0.98, 1.01], scale_atoms=True)
    return atoms


def emt_pid(system: ServeSystem, broker: str) -> int:
    found = system.wait_until(lambda: system.started_pids(broker), "an autostarted worker")
    return found[0]


# ------------------------------------------------------------ results and dynamics


def test_first_request_autostarts_emt_with_exact_results(serve_system: ServeSystem):
    system = serve_system
    broker = system.broker("--autostart")
    assert system.service(broker, "emt")["workers"] == 0 and system.started_pids(broker) == []
    calc = remote(broker)
    for atoms in (rattled_cu(1), ethanol()):
        assert_same_results(results_with(atoms, calc), results_with(atoms, EMT()))
    assert system.service(broker, "emt")["workers"] == 1
    assert "stress" not in calc.results  # the molecule: no stress asked for, none sent
    code, pids = system.stop_broker(broker)
    assert code == 0 and len(pids) == 1
    assert system.wait_gone(pids) == [], "the broker left its autostarted worker running"


def record_positions(atoms: Atoms, calc, run: Callable[[Atoms], object]) -> list:
    """Run dynamics on a copy of ``atoms`` and return the positions after every step."""
    atoms = atoms.copy()
    atoms.calc = calc
    dynamics = run(atoms)
    path = []
    dynamics.attach(lambda: path.append(atoms.get_positions()))
    dynamics.run(**dynamics.run_args)
    return path


def bfgs(atoms: Atoms):
    optimizer = BFGS(atoms, logfile=None)
    optimizer.run_args = {"fmax": 0.01, "steps": 40}
    return optimizer


def langevin(atoms: Atoms):
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(5))
    dynamics = Langevin(atoms, 2 * fs, temperature_K=300, friction=0.02, fixcm=False,
                        logfile=None, rng=np.random.default_rng(6))
    dynamics.run_args = {"steps": 50}
    return dynamics


@pytest.mark.parametrize("run", [bfgs, langevin])
def test_dynamics_follow_the_local_trajectory(bus: str, run):
    served = record_positions(rattled_cu(2), remote(bus), run)
    local = record_positions(rattled_cu(2), EMT(), run)
    assert_same_path(served, local)
    if run is langevin:
        assert len(served) == 51  # the start and 50 steps


def relax_cell(atoms: Atoms, calc) -> list:
    """Positions and cell after each of a few steps of a cell relaxation."""
    atoms = atoms.copy()
    atoms.calc = calc
    optimizer = BFGS(FrechetCellFilter(atoms), logfile=None)
    path = []
    optimizer.attach(lambda: path.append(np.vstack([atoms.positions, atoms.cell[:]])))
    optimizer.run(fmax=0.02, steps=8)
    return path


def test_cell_relaxation_through_a_filter(bus: str):
    assert_same_path(relax_cell(strained_cu(), remote(bus)), relax_cell(strained_cu(), EMT()))


def vacancy_hop() -> list[Atoms]:
    """Three images of a Cu atom hopping into a neighbouring vacancy."""
    start = bulk("Cu", cubic=True).repeat(2)
    del start[0]
    end = start.copy()
    end.positions[0] = bulk("Cu", cubic=True).positions[0]
    middle = start.copy()
    middle.positions = (start.positions + end.positions) / 2
    return [start, middle, end]


def neb_path(make_calc: Callable[[], object]) -> list:
    images = vacancy_hop()
    for image in images:
        image.calc = make_calc()
    optimizer = BFGS(NEB(images, method="improvedtangent"), logfile=None)
    path = []
    optimizer.attach(lambda: path.append(images[1].get_positions()))
    optimizer.run(fmax=0.1, steps=8)
    return path


def test_neb_with_one_calculator_per_image(bus: str):
    assert_same_path(neb_path(lambda: remote(bus)), neb_path(EMT))


# ------------------------------------------------------------ sharing


def test_two_client_processes_share_one_worker(bus: str, shared_system: ServeSystem):
    results_with(rattled_cu(0), remote(bus))  # the worker is up before the clients start
    [worker] = shared_system.workers_of(bus, "emt")
    clients = [shared_system.spawn("client", [sys.executable, str(HELPERS / "client.py"),
                                              bus, str(first), "20"]) for first in (100, 200)]
    for client in clients:
        assert client.popen.wait(60) == 0, client.log()
    printed = [json.loads(client.log().splitlines()[-1]) for client in clients]
    served = {int(seed): energy for energies in printed for seed, energy in energies.items()}
    assert sorted(served) == [*range(100, 120), *range(200, 220)]
    for seed, energy in served.items():
        assert energy == pytest.approx(results_with(rattled_cu(seed), EMT())["energy"],
                                       abs=EXACT)
    [after] = shared_system.workers_of(bus, "emt")
    assert after["id"] == worker["id"] and after["served"] == worker["served"] + 40


def energies_in_thread(broker: str, seeds: range) -> list[float]:
    calc = remote(broker)
    try:
        return [results_with(rattled_cu(seed), calc)["energy"] for seed in seeds]
    finally:
        calc.close()


def test_two_hand_started_workers_share_a_queue(serve_system: ServeSystem):
    broker = serve_system.broker()
    workers_path = broker.replace("broker.ipc", "broker-workers.ipc")
    for _ in range(2):
        serve_system.worker("emt", workers_path)
    serve_system.wait_workers(broker, "emt", 2)
    batches = [range(first, first + 10) for first in range(0, 40, 10)]
    with ThreadPoolExecutor(len(batches)) as pool:
        energies = list(pool.map(lambda seeds: energies_in_thread(broker, seeds), batches))
    assert [len(batch) for batch in energies] == [10] * 4
    counts = [worker["served"] for worker in serve_system.workers_of(broker, "emt")]
    assert len(counts) == 2 and min(counts) > 0 and sum(counts) == 40, counts


# ------------------------------------------------------------ worker lifetime


def test_idle_worker_leaves_and_next_request_starts_a_new_one(serve_system: ServeSystem):
    system = serve_system
    broker = system.broker("--autostart", "--worker-timeout", "1")
    results_with(rattled_cu(0), remote(broker))
    first_pid, [first] = emt_pid(system, broker), system.workers_of(broker, "emt")
    system.wait_until(lambda: system.service(broker, "emt")["workers"] == 0,
                      "the idle worker to leave")
    assert system.wait_gone([first_pid]) == []
    system.wait_until(lambda: first_pid not in system.started_pids(broker),
                      "the broker to reap the worker")
    local = results_with(rattled_cu(1), EMT())
    assert_same_results(results_with(rattled_cu(1), remote(broker)), local)
    second_pid, [second] = emt_pid(system, broker), system.workers_of(broker, "emt")
    assert second_pid != first_pid and second["id"] != first["id"]


def test_a_worker_says_what_its_broker_does_and_why_it_leaves(serve_system: ServeSystem):
    system = serve_system
    client, workers = system.ipc("late.ipc"), system.ipc("late-workers.ipc")
    worker = system.worker("emt", workers)
    system.wait_until(lambda: f"no broker answers at {workers} yet; still trying" in
                      worker.log(), "the worker to say that no broker answers", timeout=20)
    assert worker.alive()  # it keeps trying
    assert f"(start one with `mlipx serve-broker --path {client}`)" in worker.log()
    broker = system.broker(path="late.ipc")
    system.wait_until(lambda: f"serving model 'emt': registered with the broker at {workers}"
                      in worker.log(), "the worker to say that it serves")
    idle = system.worker("emt", workers, "--timeout", "1")
    assert idle.wait(30) == 0
    assert idle.log().strip().splitlines()[-1] == "leaving: no request for 1 s"
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert worker.log().strip().splitlines()[-1] == "leaving: got SIGTERM"
    broker_process = system.brokers[broker]
    assert system.stop_broker(broker)[0] == 0
    said = broker_process.log().strip().splitlines()
    assert said[-1] == f"model broker at {broker} stopped (got SIGTERM)", said


def test_models_without_a_broker_says_so_once_and_asks_again_later(
        serve_system: ServeSystem, monkeypatch, caplog):
    endpoint = serve_system.ipc("late.ipc")
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # takes questions, never answers
    silent.bind(endpoint)
    try:
        with caplog.at_level(logging.WARNING, logger="mlipx_serve"):
            answers = [len(Models(endpoint)), "emt" in Models(endpoint), "emt" in Models(endpoint)]
        assert answers == [0, False, False]
        asked = 0
        while silent.poll(0):  # the first Models() asked; the others knew nobody answers
            silent.recv_multipart()
            asked += 1
        assert asked == 1
    finally:
        silent.close(linger=0)
    said = [r.getMessage() for r in caplog.records if endpoint in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"no model broker answers at {endpoint}")
    serve_system.broker("--autostart", path="late.ipc")
    monkeypatch.setattr(broker_status, "NO_BROKER_MEMORY", 0.5)  # not the 30 s a script waits
    serve_system.wait_until(lambda: "emt" in Models(endpoint), "Models to find the broker")


def test_use_serve_without_a_broker_asks_it_once_not_for_every_model(
        serve_system: ServeSystem, monkeypatch, caplog):
    endpoint = serve_system.ipc("silent.ipc")
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # takes questions, never answers
    silent.bind(endpoint)
    monkeypatch.setenv("MLIPX_SERVE_BROKER", endpoint)
    try:
        with caplog.at_level(logging.WARNING, logger="mlipx_serve"):
            emt = GenericASECalculator(module="ase.calculators.emt", class_name="EMT", name="emt")
            calcs = [emt.get_calculator(use_serve=True) for _ in range(3)]
        assert all(isinstance(calc, EMT) for calc in calcs)
        asked = 0
        while silent.poll(0):
            silent.recv_multipart()
            asked += 1
        assert asked == 1  # each question to a silent endpoint costs seconds
    finally:
        silent.close(linger=0)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and all(f"no model broker answers at {endpoint}" in s for s in said)


def failing_bus(system: ServeSystem, start_timeout: str) -> str:
    """An autostart broker that also offers the models of helpers/models.py, which fail."""
    return system.broker("--autostart", "--models", str(MODELS_FILE),
                         "--worker-start-timeout", start_timeout)


def start_failure(broker: str, model: str) -> ServiceStartFailed:
    """What the bus said, under the ASE-typed error the calculator raised."""
    with pytest.raises(ServingError) as caught:
        results_with(rattled_cu(0), remote(broker, model, timeout=60))
    assert isinstance(caught.value, CalculationFailed)
    assert isinstance(caught.value.__cause__, ServiceStartFailed)
    return caught.value.__cause__


def test_a_model_that_fails_to_load_reaches_the_client(serve_system: ServeSystem):
    error = start_failure(failing_bus(serve_system, "60"), "broken")
    assert "could not start model 'broken'" in str(error)
    assert "exited with code" in str(error)
    assert "RuntimeError: weights not found: /nonexistent/model.pt" in str(error)
    assert error.service == "broken"


def test_a_model_that_loads_too_long_times_out_for_the_client(serve_system: ServeSystem,
                                                               monkeypatch, caplog):
    monkeypatch.setattr(mdp.client, "WAITING_EVERY", 0.5)
    broker = failing_bus(serve_system, "2")
    with caplog.at_level(logging.WARNING, logger="mlipx_serve"):
        error = start_failure(broker, "slow")
    waits = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert waits and "still waiting for model 'slow'" in waits[0]
    assert "its worker has been starting for" in waits[0]
    assert "did not register within 2 s" in str(error)
    assert "Last lines of its output" in str(error)  # may be none yet after 2 s
    assert "/run/mlipx/logs/slow-" in str(error)
    serve_system.wait_until(lambda: serve_system.started_pids(broker) == [],
                            "the broker to kill the slow worker")


# ------------------------------------------------------------ serve or local


def use_serve_script(system: ServeSystem, use: str, broker: str):
    script = [sys.executable, str(HELPERS / "use_serve.py")]
    return system.run(*script, MLIPX_USE_SERVE=use, MLIPX_SERVE_BROKER=broker)


def test_mlipx_use_serve_toggles_a_script(bus: str, shared_system: ServeSystem):
    nowhere = shared_system.ipc("nobody-here.ipc")
    cases = [("true", bus), ("false", bus), ("true", nowhere)]
    with ThreadPoolExecutor(len(cases)) as pool:
        runs = list(pool.map(lambda case: use_serve_script(shared_system, *case), cases))
    local = results_with(bulk("Cu", cubic=True), EMT())["energy"]
    kinds = []
    for run in runs:
        assert run.returncode == 0, run.stderr
        kind, energy = run.stdout.split()
        assert float(energy) == pytest.approx(local, abs=EXACT)
        kinds.append(kind)
    assert kinds == ["RemoteCalculator", "EMT", "EMT"]
    # one sentence: what was tried, why it failed, the one command that fixes it
    assert runs[2].stderr.splitlines() == [
        f"model 'emt' is computed locally: no model broker answers at {nowhere}; start one "
        f"with `mlipx serve-broker --autostart`"]


def test_a_malformed_endpoint_under_mlipx_use_serve_computes_locally(
        shared_system: ServeSystem):
    endpoints = ["http://localhost:5555", "tcp://nosuchhost.invalid:5555"]
    with ThreadPoolExecutor(len(endpoints)) as pool:
        runs = list(pool.map(lambda e: use_serve_script(shared_system, "true", e), endpoints))
    local = results_with(bulk("Cu", cubic=True), EMT())["energy"]
    for endpoint, run in zip(endpoints, runs, strict=True):
        assert run.returncode == 0, run.stderr
        kind, energy = run.stdout.split()
        assert kind == "EMT" and float(energy) == pytest.approx(local, abs=EXACT)
        assert run.stderr.count(endpoint) == 1, run.stderr  # one warning names it
        assert "Traceback" not in run.stderr
    assert "tcp://HOST:PORT" in runs[0].stderr
    assert "cannot be resolved" in runs[1].stderr


# ------------------------------------------------------------ clear errors


def test_unknown_model_is_a_clear_error(bus: str, shared_system: ServeSystem):
    run = shared_system.run(*MLIPX, "serve", "nosuchmodel", "--broker", bus, "--no-uv")
    assert run.returncode != 0
    assert "unknown model 'nosuchmodel'" in run.stderr and "emt" in run.stderr
    with pytest.raises(KeyError, match="offers no model 'emtt'; it offers emt, "):
        Models(bus)["emtt"]  # the closest first
    assert served_calculator_or_none("nosuch", broker=bus) is None


def test_a_broker_that_is_not_running_is_a_clear_error_within_seconds(
        serve_system: ServeSystem):
    nowhere = serve_system.ipc("nobody-here.ipc")
    calc = RemoteCalculator("emt", nowhere, broker_timeout=1.0)  # the reply may take 600 s
    started = time.monotonic()
    with pytest.raises(ServingError, match=re.escape(nowhere)) as caught:
        results_with(rattled_cu(0), calc)
    assert time.monotonic() - started < 30  # not the 600 s a reply may take
    assert isinstance(caught.value.__cause__, BrokerUnavailable)
    start = f"mlipx serve-broker --autostart --path {nowhere}"  # the path it was given
    assert start in str(caught.value)
    assert "mdp broker" not in str(caught.value)  # the bus's own advice serves no models
    run = serve_system.run(*MLIPX, "serve-status", "--broker", nowhere)
    assert run.returncode == 1
    assert f"No model broker answers at {nowhere}" in run.stdout
    assert start in " ".join(run.stdout.split())


def test_a_name_no_model_has_is_answered_within_seconds_by_a_broker_without_autostart(
        serve_system: ServeSystem):
    bus = serve_system.broker()
    serve_system.worker("emt", bus)
    serve_system.wait_workers(bus, "emt", 1)
    with pytest.raises(ServingError) as caught:
        results_with(rattled_cu(0), RemoteCalculator("emtt", bus))  # a typo
    said = str(caught.value)
    assert "knows no model of that name" in said and "it serves emt" in said
    assert f"mlipx serve emtt --models FILE --broker {worker_endpoint(bus)}" in said


def test_a_rejected_structure_is_a_clear_error_and_the_worker_goes_on(
        bus: str, shared_system: ServeSystem):
    system = shared_system
    calc = remote(bus)
    failed = system.service(bus, "emt")["failed"]
    uranium = Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]])
    with pytest.raises(RemoteCalculationError) as caught:
        results_with(uranium, calc)
    error = caught.value
    assert isinstance(error, CalculationFailed)
    assert error.error_type == "NotImplementedError" and error.model == "emt"
    assert "NotImplementedError: No EMT-potential for U" in str(error)
    assert "No EMT-potential for U" in error.remote_traceback.splitlines()[-1]
    assert system.service(bus, "emt")["failed"] == failed + 1  # the broker counts it
    assert "'emt'" in str(error)
    assert f"worker '{error.worker}'" in str(error)
    pid = int(error.worker.split(":")[1])
    assert pid in system.started_pids(bus) and system.worker_alive(pid)
    assert_same_results(results_with(rattled_cu(4), calc), results_with(rattled_cu(4), EMT()))
    assert pid in system.started_pids(bus) and len(system.workers_of(bus, "emt")) == 1


# ------------------------------------------------------------ what the broker offers


def test_models_lists_running_and_autostartable_models(bus: str):
    models = Models(bus)
    assert set(models) == set(BUILTIN_MODELS) and len(models) == len(BUILTIN_MODELS)
    assert "emt" in models and "lj" in models and "nosuch" not in models
    calc = models["emt"].get_calculator(timeout=60)
    assert_same_results(results_with(ethanol(), calc), results_with(ethanol(), EMT()))


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the rich table row that starts with ``first_cell``."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def test_serve_status_tables(bus: str, shared_system: ServeSystem):
    results_with(rattled_cu(0), remote(bus))
    counts = shared_system.service(bus, "emt")
    served, failed = str(counts["served"]), str(counts["failed"])  # other tests' too
    run = shared_system.run(*MLIPX, "serve-status", "--broker", bus)
    assert run.returncode == 0, run.stderr
    assert "Broker" in run.stdout and "Models" in run.stdout
    assert table_row(run.stdout, "path")[1] == bus
    assert table_row(run.stdout, "autostart")[1] == "on"
    columns = ["model", "idle", "busy", "queued", "served", "failed", "per s", "wait",
               "compute", "autostart", "serving", "by", "definition"]
    assert table_row(run.stdout, "model") == columns
    emt = table_row(run.stdout, "emt")
    assert emt[:6] + emt[9:] == ["emt", "1", "0", "0", served, failed, "yes", "1 worker",
                                 "broker", "ase.calculators.emt:EMT"]
    assert float(emt[6]) >= 0 and emt[7].endswith(" ms") and emt[8].endswith(" ms")
    assert table_row(run.stdout, "mace-mpa-0") == [
        "mace-mpa-0", *"00000", "", "", "", "yes", "1 worker", "broker",
        "mace.calculators:mace_mp model=medium-mpa-0"]
    assert table_row(run.stdout, "chgnet")[10] == "batch 16 (0.01 s), 1 worker"
    # piped, not on a terminal: every cell whole, not squeezed into 80 columns
    assert "…" not in run.stdout and max(map(len, run.stdout.splitlines())) > 80


def test_serve_status_shows_a_stuck_request_and_counts_each_one_way(
        serve_system: ServeSystem):
    system = serve_system
    bus = system.broker()  # no autostart: a request for emt waits for a worker
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(results_with, rattled_cu(0), remote(bus))
        system.wait_until(lambda: system.service(bus, "emt")["queued"] == 1,
                          "the request to queue")
        run = system.run(*MLIPX, "serve-status", "--broker", bus)
        assert table_row(run.stdout, "emt") == ["emt", "0", "0", "1", "0", "0", "0.0", "-",
                                                "-", "no: start a worker", "", "", ""]
        assert f"start a worker with `mlipx serve emt --broker {bus}`" in \
            " ".join(run.stdout.split())
        system.worker("emt", bus)
        waiting.result(timeout=60)
    with pytest.raises(RemoteCalculationError):
        results_with(Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]]), remote(bus))
    run = system.run(*MLIPX, "serve-status", "--broker", bus)
    emt = table_row(run.stdout, "emt")
    assert emt[:6] + emt[9:] == ["emt", "1", "0", "0", "1", "1", "no", "", "worker",
                                 "ase.calculators.emt:EMT"]
    [worker] = system.workers_of(bus, "emt")
    row = table_row(run.stdout, worker["metadata"]["process"])
    assert row[3:5] == ["1", "1"] and row[7] == "cpu"  # served, failed; the device
    assert worker["metadata"]["started"] <= system.status(bus)["at"]


def test_serve_status_json(bus: str, shared_system: ServeSystem):
    results_with(rattled_cu(0), remote(bus))
    run = shared_system.run(*MLIPX, "serve-status", "--broker", bus, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert {"running", "broker", "status", "autostart"} <= data.keys()
    assert data["running"] is True and data["broker"] == bus
    emt = data["status"]["services"]["emt"]
    assert emt["workers"] == emt["idle"] == 1 and emt["served"] >= 1
    workers = [worker["service"] for worker in data["status"]["workers"]]
    assert workers.count("emt") == 1
    assert len(workers) == sum(s["workers"] for s in data["status"]["services"].values())
    assert set(data["autostart"]["models"]) == set(BUILTIN_MODELS)
    assert data["autostart"]["started_pids"] == shared_system.started_pids(bus)


# ------------------------------------------------------------ the command line


def test_the_issue_example_verbatim(serve_system: ServeSystem):
    directory = serve_system.directory
    broker = serve_system.broker(path="my-broker.ipc", heartbeat=False)
    assert broker == f"ipc://{directory}/my-broker.ipc"
    serve_system.worker("emt", f"ipc://{directory}/my-broker-workers.ipc", heartbeat=False)
    serve_system.worker("emt", broker, heartbeat=False)  # the broker's own path works too
    serve_system.wait_workers(broker, "emt", 2)
    run = serve_system.run(*MLIPX, "serve-status", "--broker", f"ipc://{directory}/my-broker.ipc")
    assert run.returncode == 0, run.stderr
    assert table_row(run.stdout, "emt")[:4] == ["emt", "2", "0", "0"]
    assert list(Models(broker)) == ["emt"]
    via_worker_path = remote(f"ipc://{directory}/my-broker-workers.ipc")
    assert_same_results(results_with(ethanol(), via_worker_path), results_with(ethanol(), EMT()))


def test_other_subcommands_need_the_full_mlipx(serve_system: ServeSystem):
    if importlib.util.find_spec("mlipx") is not None:
        pytest.skip("mlipx is installed: other subcommands go to it")
    run = serve_system.run(*MLIPX, "foo")
    assert run.returncode != 0
    said = " ".join(run.stderr.split())
    assert run.returncode == 2
    assert "'foo' is not one of serve-broker, serve, serve-status" in said
    assert "need mlipx: pip install mlipx" in said


def test_ase_sees_its_own_exception_types_and_the_calculator_says_what_it_is(bus: str):
    atoms = rattled_cu(1)
    with remote(bus) as calc:
        atoms.calc = calc
        with pytest.raises(PropertyNotImplementedError) as caught:
            atoms.get_charges()  # EMT has none
        assert caught.value.model == "emt"
        assert atoms.get_potential_energy() == pytest.approx(
            results_with(atoms, EMT())["energy"], abs=EXACT)
        assert calc.todict() == EMT().todict() and calc.name == "emt"  # the model's
        assert calc._client is not None
    assert calc._client is None  # the context manager closed its socket


def test_a_malformed_request_is_a_payload_error_from_the_worker(bus: str):
    results_with(rattled_cu(0), remote(bus))  # so that a worker runs
    with mdp.client.Client(bus, timeout=30) as client:
        with pytest.raises(WorkerError) as caught:
            client.request("emt", b'{"v":1,"arrays":[{"name":"numbers","dtype":[1]}]}')
    assert caught.value.error_type == "PayloadError"
    assert "dtype [1] is not allowed" in caught.value.message
    mapped = remote_error(caught.value, "emt")
    assert isinstance(mapped, PayloadError) and "dtype [1]" in str(mapped)



@pytest.mark.parametrize("args, environment, said", [
    (["serve-status", "--broker", "http://localhost:5555"], {},
     "--broker 'http://localhost:5555' is not a broker endpoint"),
    (["serve", "emt", "--no-uv", "--broker", "tcp://127.0.0.1"], {},
     "--broker 'tcp://127.0.0.1' has no port"),
    (["serve-broker", "--path", "http://localhost:5555"], {},
     "--path 'http://localhost:5555' is not a broker endpoint"),
    (["serve-status"], {"MLIPX_SERVE_BROKER": "http://localhost:5555"},
     "MLIPX_SERVE_BROKER='http://localhost:5555' is not a broker endpoint"),
    (["serve-status", "--broker", "tcp://nosuchhost.invalid:5555"], {},
     "--broker 'tcp://nosuchhost.invalid:5555' names a host, 'nosuchhost.invalid', that "
     "cannot be resolved"),
], ids=["serve-status", "serve", "serve-broker", "variable", "unresolvable"])
def test_a_malformed_endpoint_ends_a_command_with_one_line(serve_system: ServeSystem, args,
                                                           environment, said):
    run = serve_system.run(*MLIPX, *args, **environment)
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"error: {said}"), run.stderr
    if "resolved" not in said:
        assert "ipc://PATH" in run.stderr and "tcp://HOST:PORT" in run.stderr


@pytest.mark.skipif(importlib.util.find_spec("mace") is not None, reason="mace is installed")
def test_advice_in_brackets_reaches_the_user(serve_system: ServeSystem):
    run = serve_system.run(*MLIPX, "serve", "mace-mpa-0", "--no-uv", "--broker",
                           serve_system.ipc("nobody-here.ipc"))
    assert run.returncode == 1
    assert "uv pip install 'mlipx-serve[mace]'" in run.stderr, run.stderr


def test_a_broken_models_file_is_one_clear_error(serve_system: ServeSystem, tmp_path: Path):
    broken = tmp_path / "bad.py"
    broken.write_text("ALL_MODELS = {'x': 1 / 0}\n")
    run = serve_system.run(*MLIPX, "serve", "x", "--models", str(broken), "--no-uv")
    said = " ".join(run.stderr.split())
    assert run.returncode == 1
    assert f"error: models file '{broken}' failed to run: ZeroDivisionError" in said
    assert "Traceback" not in said and "Exit" not in said


def test_a_models_file_without_autostart_is_refused(serve_system: ServeSystem, tmp_path: Path):
    run = serve_system.run(*MLIPX, "serve-broker", "--path", serve_system.ipc("unused.ipc"),
                           "--models", str(MODELS_FILE))
    assert run.returncode == 1
    assert "needs --autostart" in " ".join(run.stderr.split())


def test_a_broker_that_cannot_bind_says_only_that(serve_system: ServeSystem):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        run = serve_system.run(*MLIPX, "serve-broker", "--path", endpoint)
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot bind the broker to {endpoint}"), run.stderr


def test_help_names_the_environment_variables(serve_system: ServeSystem):
    for command, variables in [("serve", ["MLIPX_SERVE_BROKER", "MLIPX_SERVE_CURVE_SERVER_KEY",
                                          "MLIPX_SERVE_MODELS"]),
                               ("serve-status", ["MLIPX_SERVE_BROKER"]),
                               ("serve-broker", ["MLIPX_SERVE_BROKER", "MLIPX_SERVE_MODELS"]),
                               ("--help", ["MLIPX_SERVE_TIMEOUT", "MLIPX_USE_SERVE",
                                           "MLIPX_SERVE_HOOK"])]:
        run = serve_system.run(*MLIPX, *dict.fromkeys([command, "--help"]), COLUMNS="200")
        for variable in variables:
            assert variable in run.stdout, (command, variable)


def test_a_broker_that_stops_tells_the_client_it_holds(serve_system: ServeSystem):
    bus = serve_system.broker()
    serve_system.worker("slow-call", bus, "--models", str(MODELS_FILE))
    serve_system.wait_workers(bus, "slow-call", 1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(results_with, rattled_cu(0), remote(bus, "slow-call"))
        serve_system.wait_until(lambda: serve_system.service(bus, "slow-call")["busy"] == 1,
                                "the worker to take the request")
        serve_system.brokers[bus].signal(signal.SIGINT)  # Ctrl-C
        with pytest.raises(ServingError) as caught:
            waiting.result(timeout=20)  # not the 600 s the request could have waited
    assert isinstance(caught.value.__cause__, BrokerStopping)


def test_an_autostarted_worker_leaves_when_its_broker_is_killed(serve_system: ServeSystem):
    bus = serve_system.broker("--autostart", "--worker-timeout", "300")
    results_with(rattled_cu(0), remote(bus))
    [pid] = serve_system.started_pids(bus)
    serve_system.brokers[bus].signal(signal.SIGKILL)
    assert serve_system.wait_gone([pid], timeout=20) == []  # not its 300 s idle timeout


def test_serve_status_watch_redraws_until_ctrl_c(bus: str, shared_system: ServeSystem):
    """On a terminal (a pty here): the tables, redrawn in place; Ctrl-C ends it with 0."""
    import os
    import pty

    parent, child = pty.openpty()
    watch = subprocess.Popen([*MLIPX, "serve-status", "--watch", "--interval", "0.2",
                              "--broker", bus], stdin=child, stdout=child, stderr=child,
                             env=shared_system.env(TERM="xterm"))
    os.close(child)
    shown = b""
    try:
        while shown.count(b"Broker") < 3:  # the first drawing and two refreshes
            ready, _, _ = select.select([parent], [], [], WAIT_SECONDS)
            assert ready, f"serve-status --watch showed no refresh:\n{shown.decode()}"
            shown += os.read(parent, 65536)
        watch.send_signal(signal.SIGINT)
        deadline = time.monotonic() + WAIT_SECONDS
        while watch.poll() is None and time.monotonic() < deadline:
            # read on while it ends: a full pty would stop it in the middle of a redraw
            if select.select([parent], [], [], 0.1)[0]:
                try:
                    shown += os.read(parent, 65536)
                except OSError:  # its side closed
                    break
        assert watch.wait(20) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        os.close(parent)
    assert b"Models" in shown and b"\x1b[" in shown  # cursor moves: redrawn in place
