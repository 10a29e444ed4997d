"""A client process: energies of rattled Cu cells through the bus, printed as JSON.

Usage: client.py BROKER FIRST_SEED COUNT. The test rebuilds the same cells locally.
"""

from __future__ import annotations

import json
import sys

from ase.build import bulk

from mlipx_serve import RemoteCalculator


def rattled_cu(seed: int):
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=seed)
    return atoms


def main() -> None:
    broker, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    calc = RemoteCalculator("emt", broker, timeout=30)
    energies = {}
    for seed in range(first, first + count):
        atoms = rattled_cu(seed)
        atoms.calc = calc
        energies[seed] = atoms.get_potential_energy()
    calc.close()
    print(json.dumps(energies))


if __name__ == "__main__":
    main()
