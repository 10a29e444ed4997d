"""The bus's CPU per structure when ``map`` sends many: chunked against one per request.

One broker and one worker serving ``zero`` (``bench/models.py``: a calculator that does
almost no work, so that what the timings differ by is the transport). For each cell size,
side by side in one run, taking turns repetition by repetition:

- local loop: the same calculator in this process, a loop over the structures, each asked
  for its energy and forces as a script asks;
- local, as a worker computes: the same, but the way a worker asks its calculator (no ASE
  state comparison, which a worker skips as each request brings atoms of its own): what
  the model's side of ``map`` costs without the bus;
- map, chunked: ``evaluate(..., chunk_size=None)``, the sizes ``map`` chooses itself;
- map, 1 per request: ``evaluate(..., chunk_size=1)``, each structure its own request.

For each, the CPU time (user + system) of every process involved (this one with its zmq
threads, the broker, the worker) per structure, and the wall time per structure; "bus"
is the CPU per structure minus that of computing as a worker does, the transport's own
cost (against the script's own loop it is smaller still). Medians over repetitions.

    python bench/map_overhead.py                        # about 1-2 minutes
    python bench/map_overhead.py --sizes 32 --repetitions 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from ase import Atoms
from bench_calculators import ZeroCalculator
from calc_overhead import MODELS_FILE, process_cpu, served

from mlipx_serve import environment, evaluate
from mlipx_serve.client.mapping import DEFAULT_PROPERTIES as PROPERTIES
from mlipx_serve.worker.compute import build_calculator, compute

AS_A_WORKER = "local, as a worker"


def structures(atoms_each: int, count: int) -> list[Atoms]:
    """``count`` periodic copper boxes of ``atoms_each`` atoms at about solid density."""
    rng = np.random.default_rng(0)
    side = (atoms_each * 11.8) ** (1 / 3)
    return [Atoms(numbers=np.full(atoms_each, 29), positions=rng.uniform(0, side, (atoms_each, 3)),
                  cell=[side] * 3, pbc=True) for _ in range(count)]


def local_loop(batch: list[Atoms]) -> None:
    calc = ZeroCalculator()
    for atoms in batch:
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        atoms.get_forces()


def as_a_worker(batch: list[Atoms]) -> Callable[[], None]:
    from models import ZERO  # bench/models.py, as this script's folder is on the path

    calc = build_calculator(ZERO)
    os.environ.pop(environment.USE_SERVE)  # which build_calculator sets for a worker

    def run() -> None:
        for atoms in batch:
            compute(calc, atoms, list(PROPERTIES))

    return run


def measured(run: Callable[[], None], pids: list[int], count: int) -> tuple[float, float]:
    """CPU seconds per structure over this process and ``pids``, and wall seconds."""
    def cpu() -> float:
        return time.process_time() + sum(process_cpu(pid) for pid in pids)

    cpu_before, wall_before = cpu(), time.perf_counter()
    run()
    return (cpu() - cpu_before) / count, (time.perf_counter() - wall_before) / count


def measure(atoms_each: int, count: int, repetitions: int) -> dict[str, dict[str, list[float]]]:
    batch = structures(atoms_each, count)
    with served("zero", ["--models", str(MODELS_FILE)]) as (endpoint, processes):
        pids = [process.pid for process in processes]
        systems: dict[str, Callable[[], None]] = {
            "local loop": lambda: local_loop(batch),
            AS_A_WORKER: as_a_worker(batch),
            "map, chunked": lambda: evaluate("zero", batch, broker=endpoint, progress=False),
            "map, 1 per request": lambda: evaluate("zero", batch, broker=endpoint,
                                                   progress=False, chunk_size=1),
        }
        for run in systems.values():  # warm-up: first sockets, imports, caches
            run()
        found: dict[str, dict[str, list[float]]] = {
            label: {"cpu": [], "wall": []} for label in systems}
        for _ in range(repetitions):
            for label, run in systems.items():
                cpu, wall = measured(run, pids, count)
                found[label]["cpu"].append(cpu)
                found[label]["wall"].append(wall)
    return found


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


def report(atoms_each: int, count: int, found: dict[str, dict[str, list[float]]]) -> None:
    repetitions = len(found[AS_A_WORKER]["cpu"])
    print(f"\n{atoms_each:,} atoms a structure, {count:,} structures, {repetitions} "
          f"repetitions; per structure, medians")
    print(f"  {'system':<20} {'CPU (all)':>11} {'bus CPU':>10} {'min..max bus':>20} "
          f"{'wall':>10}")
    local = statistics.median(found[AS_A_WORKER]["cpu"])
    for label, values in found.items():
        cpu, wall = statistics.median(values["cpu"]), statistics.median(values["wall"])
        served = label.startswith("map")
        bus = us(cpu - local) if served else ""
        spread = "" if not served else \
            f"{us(min(values['cpu']) - local)}..{us(max(values['cpu']) - local)}"
        print(f"  {label:<20} {us(cpu):>11} {bus:>10} {spread:>20} {us(wall):>10}")
    chunked = statistics.median(found["map, chunked"]["cpu"]) - local
    single = statistics.median(found["map, 1 per request"]["cpu"]) - local
    print(f"  bus CPU, 1 per request / chunked: {single / chunked:.1f}x"
          + ("   (target for 32 atoms: chunked <= 300 us)" if atoms_each <= 32 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 1000],
                        help="atoms a structure, one table each (default 32 1000)")
    parser.add_argument("--atoms-per-run", type=int, default=64_000,
                        help="structures per repetition: this many atoms' worth")
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    for atoms_each in args.sizes:
        count = max(200, args.atoms_per_run // atoms_each)
        print(f"{atoms_each} atoms: starting a broker and a 'zero' worker ...", flush=True)
        report(atoms_each, count, measure(atoms_each, count, args.repetitions))


if __name__ == "__main__":
    main()
