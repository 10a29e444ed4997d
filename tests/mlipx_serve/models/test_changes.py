"""The cheap change check agrees with ASE's on every kind of change."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import compare_atoms

from mlipx_serve.models.changes import changes


def base():
    atoms = bulk("NaCl", "rocksalt", a=5.6)
    atoms.set_initial_magnetic_moments([1.0, 0.0])
    return atoms


CHANGES = {
    "nothing": lambda a: None,
    "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-9),
    "numbers": lambda a: a.numbers.__setitem__(0, 12),
    "cell": lambda a: a.set_cell(a.cell.array * 1.01),
    "pbc": lambda a: a.set_pbc([True, False, True]),
    "magmoms": lambda a: a.set_initial_magnetic_moments([2.0, 0.0]),
    "charges added": lambda a: a.set_initial_charges([0.5, -0.5]),
    "magmoms removed": lambda a: a.arrays.pop("initial_magmoms"),
    "shape": lambda a: a.extend(a[:1]),
}


@pytest.mark.parametrize("change", CHANGES)
def test_the_same_changes_as_ase(change):
    before, after = base(), base()
    CHANGES[change](after)
    assert sorted(changes(before, after)) == sorted(compare_atoms(before, after))
    assumed = changes(before, after, assume_moved=True)
    assert sorted(assumed) == sorted({*compare_atoms(before, after), "positions"})


def test_nothing_seen_before_is_all_changed():
    assert set(changes(None, base())) == {"positions", "numbers", "cell", "pbc",
                                          "initial_charges", "initial_magmoms"}


def test_arrays_are_compared_exactly():
    before, after = base(), base()
    after.positions[1] = np.nextafter(after.positions[1], np.inf)
    assert changes(before, after) == ["positions"]
