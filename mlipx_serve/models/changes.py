"""What changed in a system since a calculator last saw it: ASE's check, made cheap.

ASE's ``compare_atoms`` tests every array against a tolerance (1e-15, below a double's
resolution at any atomic coordinate), which costs ~80 us for 64 atoms and milliseconds for
a large cell, and a calculator asks it once per property. Exact comparison answers the
same but for differences no coordinate can hold, and costs a few microseconds.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes

ARRAYS = [name for name in all_changes if name not in ("cell", "pbc")]


def changes(previous: Atoms | None, atoms: Atoms, *, assume_moved: bool = False) -> list[str]:
    """``check_state``'s answer; ``assume_moved`` counts the positions as changed without
    comparing them (a worker's every request is a new structure)."""
    if previous is None:
        return list(all_changes)
    found = []
    if not _equal(previous.cell.array, atoms.cell.array):
        found.append("cell")
    if not _equal(previous.pbc, atoms.pbc):
        found.append("pbc")
    for name in ARRAYS:
        before, now = previous.arrays.get(name), atoms.arrays.get(name)
        moved = assume_moved and name == "positions"
        if moved or (before is None) != (now is None) or \
                (before is not None and not _equal(before, now)):
            found.append(name)
    return found


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal`` for two arrays, without its conversions."""
    return a.shape == b.shape and bool((a == b).all())
