"""A models file for the benchmarks: a calculator that does almost no work.

``bench/calc_overhead.py`` serves ``zero`` with ``mlipx serve zero --models bench/models.py``
and runs the same calculator locally and behind ASE's SocketIOCalculator, so that what the
timings differ by is the transport, not the model.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class ZeroCalculator(Calculator):
    """Energy, forces and stress of the right shapes, all zero: the cheapest honest reply.

    ``np.zeros`` hands back fresh pages without touching them, so even 100,000 atoms cost
    next to nothing here, yet every array has the shape and dtype a real model returns.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {
            "energy": 0.0,
            "free_energy": 0.0,
            "forces": np.zeros((len(self.atoms), 3)),
            "stress": np.zeros(6),
        }


class ZeroModel:
    """A registry entry: anything with ``get_calculator()`` will do."""

    name = "zero"

    def get_calculator(self, **kwargs) -> Calculator:
        return ZeroCalculator()


ALL_MODELS = {"zero": ZeroModel()}
