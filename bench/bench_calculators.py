"""The calculators of the benchmarks, importable by name (``bench_calculators``) in every
process whose path has ``bench/``: ``bench/models.py`` puts it there for the workers.

``ZeroCalculator`` does almost no work, so that what timings differ by is the transport,
not the model; ``DeviceLikeCalculator`` stands in for a model on a GPU, which keeps the
host CPU free while it works (it sleeps) and costs a fixed time per call plus a little per
structure, so that a batch costs far less than its structures one by one.
"""

from __future__ import annotations

import os
import time

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

DEVICE_CALL = float(os.environ.get("BENCH_DEVICE_CALL", "0.001"))  # seconds per model call
DEVICE_STRUCTURE = float(os.environ.get("BENCH_DEVICE_STRUCTURE", "0.0002"))  # and each


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


class DeviceLikeCalculator(ZeroCalculator):
    """Sleeps as a GPU model computes: a fixed cost per call plus a small one per structure."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        time.sleep(DEVICE_CALL + DEVICE_STRUCTURE)
        super().calculate(atoms, properties, system_changes)

    def calculate_batch(self, structures, properties):
        time.sleep(DEVICE_CALL + DEVICE_STRUCTURE * len(structures))
        return [{"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((len(atoms), 3)),
                 "stress": np.zeros(6)} for atoms in structures]
