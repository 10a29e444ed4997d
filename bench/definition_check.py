"""What asking for a model by its definition costs per call, against asking by name.

One broker and one worker serving ``zero`` (``bench/models.py``: a calculator that does
almost no work), and two ``RemoteCalculator`` on it: one by name, one with the model's
definition, whose fingerprint and JSON then travel in every request and which the worker
checks (protocol/model-definition.md). They take turns, block by block, in alternating
order; wall time per call (median of a block) and CPU time per call of all processes,
medians over the blocks. (``bench/calc_overhead.py`` runs each on a broker of its own,
where the two brokers' noise hides a difference this small.)

    python bench/definition_check.py          # about 1 minute
"""

from __future__ import annotations

import argparse
import statistics
import time

from calc_overhead import MODELS_FILE, make_atoms, process_cpu, served, zero_definition

from mlipx_serve.client.calculator import RemoteCalculator


def block(atoms, pids: list[int], calls: int) -> tuple[float, float]:
    """Median wall seconds per call, and CPU seconds per call of this process and ``pids``."""
    def cpu() -> float:
        return time.process_time() + sum(process_cpu(pid) for pid in pids)

    before, times = cpu(), []
    for i in range(calls):
        atoms.positions[0, 0] += 1e-3 if i % 2 else -1e-3
        start = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (cpu() - before) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=14)
    parser.add_argument("--calls", type=int, default=400, help="calls per block")
    args = parser.parse_args()
    with served("zero", ["--models", str(MODELS_FILE)]) as (endpoint, processes):
        pids = [process.pid for process in processes]
        sides = {}
        for label, definition in (("by name", None), ("by definition", zero_definition())):
            atoms = make_atoms(64)
            atoms.calc = RemoteCalculator("zero", broker=endpoint, timeout=60,
                                          definition=definition)
            block(atoms, pids, 50)  # connect, warm up
            sides[label] = atoms
        found: dict[str, list[tuple[float, float]]] = {label: [] for label in sides}
        for turn in range(args.blocks):
            order = list(sides) if turn % 2 else list(reversed(sides))
            for label in order:
                found[label].append(block(sides[label], pids, args.calls))
    print(f"\n64 atoms, energy and forces per call; medians of {args.blocks} blocks of "
          f"{args.calls} calls")
    medians = {label: [statistics.median(column) for column in zip(*values, strict=True)]
               for label, values in found.items()}
    for label, (wall, cpu) in medians.items():
        print(f"  {label:<14} wall {wall * 1e6:7,.0f} us   CPU (all processes) "
              f"{cpu * 1e6:7,.0f} us")
    (name_wall, name_cpu), (def_wall, def_cpu) = medians.values()
    print(f"  by definition / by name: wall {def_wall / name_wall:.2f}x, "
          f"CPU {def_cpu / name_cpu:.2f}x")


if __name__ == "__main__":
    main()
