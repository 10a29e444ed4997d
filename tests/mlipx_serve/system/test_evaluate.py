"""Many structures from one script: evaluate() and Models()[name].map()."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from support import HELPERS

from mdp.worker import Worker
from mlipx_serve import Models, StructureFailed, evaluate
from mlipx_serve.client.chunking import MAX_CHUNK
from mlipx_serve.errors import PayloadError
from mlipx_serve.wire.endpoints import worker_endpoint
from mlipx_serve.wire.payload import decode_request, encode_results

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = pytest.mark.timeout(120)

EXACT = 1e-12


def structures(count: int) -> list[Atoms]:
    """Cells and molecules of different sizes, so that replies come back out of order."""
    found = []
    for i in range(count):
        atoms = bulk("Cu", cubic=True) * (1 + i % 3, 1, 1) if i % 4 else molecule("CH4")
        atoms.rattle(0.03, seed=i)
        found.append(atoms)
    return found


def local(atoms: Atoms) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces()


def assert_results_of(inputs: list[Atoms], outputs: list[Atoms]) -> None:
    assert len(outputs) == len(inputs)
    for given, got in zip(inputs, outputs, strict=True):
        assert got is not given and got.calc is not None
        assert isinstance(got.calc, SinglePointCalculator)
        assert got.get_chemical_formula() == given.get_chemical_formula()
        assert np.array_equal(got.positions, given.positions)
        energy, forces = local(given)
        assert got.get_potential_energy() == pytest.approx(energy, abs=EXACT)
        np.testing.assert_allclose(got.get_forces(), forces, rtol=0, atol=EXACT)


def test_evaluate_keeps_the_order_and_equals_local(bus: str):
    inputs = structures(30)
    assert_results_of(inputs, evaluate("emt", inputs, broker=bus, max_in_flight=8))


def test_map_unordered_gives_the_same_results(bus: str):
    inputs = structures(12)
    got = list(Models(bus)["emt"].map(iter(inputs), ordered=False, progress=False))
    by_formula_and_energy = sorted((a.get_chemical_formula(), a.get_potential_energy())
                                   for a in got)
    expected = sorted((a.get_chemical_formula(), local(a)[0]) for a in inputs)
    assert [f for f, _ in by_formula_and_energy] == [f for f, _ in expected]
    np.testing.assert_allclose([e for _, e in by_formula_and_energy],
                               [e for _, e in expected], rtol=0, atol=EXACT)


def uranium() -> Atoms:
    return Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]])  # EMT has no U


def test_a_failed_structure_raises_when_its_turn_comes(bus: str):
    inputs = [*structures(3), uranium(), *structures(3)]
    seen = []
    with pytest.raises(StructureFailed) as caught:
        for atoms in Models(bus)["emt"].map(inputs, progress=False):
            seen.append(atoms)
    assert caught.value.index == 3 and len(seen) == 3
    assert "No EMT-potential for U" in str(caught.value)
    assert_results_of(inputs[:3], seen)


def test_a_failed_structure_can_come_back_as_data(bus: str):
    inputs = [*structures(3), uranium(), *structures(3)]
    got = evaluate("emt", inputs, broker=bus, on_error="keep")
    assert got[3].calc is None and "No EMT-potential for U" in got[3].info["error"]
    assert_results_of(inputs[:3] + inputs[4:], got[:3] + got[4:])


def test_it_works_where_an_event_loop_already_runs(bus: str):
    """As in a Jupyter cell: the caller's thread runs a loop of its own."""
    inputs = structures(5)

    async def cell() -> list[Atoms]:
        return evaluate("emt", inputs, broker=bus)

    assert_results_of(inputs, asyncio.run(cell()))


def test_stopping_early_leaves_nothing_running(bus: str):
    before = threading.active_count()
    results = Models(bus)["emt"].map(structures(40), max_in_flight=4, progress=False)
    first = next(results)
    results.close()
    assert first.calc is not None
    assert threading.active_count() == before


SCRIPT = """
    import sys
    from ase.build import bulk
    from mlipx_serve import evaluate
    evaluate("emt", [bulk("Cu", cubic=True)] * 3, broker=sys.argv[1], progress={progress})
"""


@pytest.mark.parametrize("progress, shown", [("None", False), ("True", True)])
def test_the_progress_bar_is_off_when_not_on_a_terminal(bus: str, shared_system: ServeSystem,
                                                         progress: str, shown: bool):
    run = shared_system.run(sys.executable, "-c",
                            textwrap.dedent(SCRIPT.format(progress=progress)), bus)
    assert run.returncode == 0, run.stderr
    assert ("3/3" in run.stderr) is shown


def test_a_long_map_makes_autostart_add_workers(serve_system: ServeSystem):
    models = HELPERS / "models.py"
    bus = serve_system.broker("--autostart", "--models", str(models),
                              "--max-workers-per-model", "2")
    inputs = structures(60)
    assert_results_of(inputs, evaluate("sleepy-emt", inputs, broker=bus, max_in_flight=16))
    assert len(serve_system.workers_of(bus, "sleepy-emt")) == 2


# ------------------------------------------------------------ chunks: several a request


def served_requests(system: ServeSystem, bus: str) -> int:
    return sum(worker["served"] for worker in system.workers_of(bus, "emt"))


def test_small_structures_go_several_to_a_request_and_come_back_in_order(
        bus: str, shared_system: ServeSystem):
    inputs = structures(32)
    evaluate("emt", inputs[:1], broker=bus)  # a worker up, its first request counted
    before = served_requests(shared_system, bus)
    assert_results_of(inputs, evaluate("emt", inputs, broker=bus, chunk_size=8))
    assert served_requests(shared_system, bus) - before == 4
    molecules = [molecule("CH4") for _ in range(64)]  # ~1 ms each: ~10 to a chunk's 10 ms
    for seed, atoms in enumerate(molecules):
        atoms.rattle(0.03, seed=seed)
    before = served_requests(shared_system, bus)
    assert_results_of(molecules, evaluate("emt", molecules, broker=bus, max_in_flight=4))
    assert 2 < served_requests(shared_system, bus) - before <= len(molecules) // 2


def test_structures_with_magnetic_moments_go_apart_and_keep_them(bus: str):
    inputs = structures(12)
    for atoms in inputs[4:8]:
        atoms.set_initial_magnetic_moments(np.linspace(0, 1, len(atoms)))
    got = evaluate("emt", inputs, broker=bus, chunk_size=6)
    assert_results_of(inputs, got)
    for given, result in zip(inputs, got, strict=True):
        np.testing.assert_array_equal(result.get_initial_magnetic_moments(),
                                      given.get_initial_magnetic_moments())


def test_a_structure_that_fails_inside_a_chunk_raises_when_its_turn_comes(bus: str):
    inputs = [*structures(3), uranium(), *structures(4)]
    seen = []
    with pytest.raises(StructureFailed) as caught:
        for atoms in Models(bus)["emt"].map(inputs, progress=False, chunk_size=8):
            seen.append(atoms)
    assert caught.value.index == 3 and "No EMT-potential for U" in str(caught.value)
    assert_results_of(inputs[:3], seen)


def test_a_structure_that_fails_inside_a_chunk_comes_back_alone_as_data(bus: str):
    inputs = [*structures(3), uranium(), *structures(4)]
    got = evaluate("emt", inputs, broker=bus, on_error="keep", chunk_size=8)
    assert got[3].calc is None and "No EMT-potential for U" in got[3].info["error"]
    assert_results_of(inputs[:3] + inputs[4:], got[:3] + got[4:])


def test_a_chunk_size_below_one_is_refused(bus: str):
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        evaluate("emt", structures(2), broker=bus, chunk_size=0)


def test_a_chunk_may_take_its_structures_timeouts_together(serve_system: ServeSystem):
    bus = serve_system.broker("--autostart", "--models", str(HELPERS / "models.py"))
    evaluate("sleepy-emt", structures(1), broker=bus, timeout=120)  # its worker up
    inputs = structures(20)  # 0.05 s of sleep each: 1 s for the chunk, 0.5 s allowed each
    assert_results_of(inputs, evaluate("sleepy-emt", inputs, broker=bus, timeout=0.5,
                                       chunk_size=20))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("serving", [[], ["--batch-size", "4"]], ids=["plain", "batching"])
def test_a_structure_that_kills_its_workers_fails_alone_and_not_its_chunk(
        serve_system: ServeSystem, serving: list[str]):
    """Its chunk's structures are tried one after another: together, a batching worker
    would batch them again, and the deadly one kill the others' chances too."""
    bus = serve_system.broker("--autostart", "--models", str(HELPERS / "models.py"), *serving)
    inputs = [*structures(3), uranium(), *structures(4)]
    got = evaluate("fatal-on-uranium", inputs, broker=bus, on_error="keep", chunk_size=8)
    assert got[3].calc is None and "workers died" in got[3].info["error"]
    assert_results_of(inputs[:3] + inputs[4:], got[:3] + got[4:])


def test_a_worker_that_reads_no_chunks_gets_one_structure_a_request(serve_system: ServeSystem):
    """A worker of an older kind, which reads payload version 1 only, refuses a chunk:
    the map sends its structures alone, and the rest of the map too."""
    bus = serve_system.broker()
    versions = []

    def old_worker(frames: list) -> list:
        version = json.loads(bytes(frames[0]))["v"]
        versions.append(version)
        if version != 1:
            raise PayloadError(f"unsupported payload version {version} here; this side "
                               f"reads 1")
        atoms, properties = decode_request(frames)
        atoms.calc = EMT()
        return encode_results({"energy": atoms.get_potential_energy(),
                               "forces": atoms.get_forces()})

    worker = Worker(worker_endpoint(bus), "old-emt", old_worker, heartbeat_interval=0.3)
    worker.start()
    try:
        inputs = structures(24)
        assert_results_of(inputs, evaluate("old-emt", inputs, broker=bus, chunk_size=6,
                                           max_in_flight=1))  # (one chunk goes out first)
    finally:
        worker.stop()
        worker.join(10)
    assert versions.count(2) == 1 and versions.count(1) == len(inputs)


def test_a_slow_reader_holds_the_map_back(bus: str):
    """Results not yet taken, and structures not yet read, stay few: the map reads on only
    as the caller takes results (bounded memory)."""
    read = []

    def molecules():
        for index in range(20_000):
            read.append(index)
            yield molecule("H2")

    results = Models(bus)["emt"].map(molecules(), max_in_flight=2, progress=False)
    taken = [next(results) for _ in range(5)]
    counts = [-1, len(read)]
    while counts[-1] != counts[-2]:  # until it reads no more, a second at a time
        time.sleep(1.0)
        counts.append(len(read))
    results.close()
    assert len(taken) == 5 and 5 < counts[-1] <= 5 + 2 * 2 * MAX_CHUNK + MAX_CHUNK
