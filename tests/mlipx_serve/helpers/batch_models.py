"""Models for the batching and GPU tests: they report how they were called in their results.

``counting-emt`` offers ``calculate_batch`` and tags each result with the batch it came
in; a batch that holds uranium raises as a whole (one bad structure must then fail alone).
``gpu-emt`` is slow and tags each result with the worker's CUDA_VISIBLE_DEVICES and
OMP_NUM_THREADS.
``one-at-a-time-emt`` (for `--prefetch`) raises when two structures are computed at once,
fills one forces array in place for every structure, as calculators that keep buffers do,
and tags each result with the worker's pid.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import numpy as np
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT


def emt_results(atoms, properties) -> dict:
    atoms = atoms.copy()
    atoms.calc = EMT()
    atoms.get_potential_energy()
    return dict(atoms.calc.results)


class CountingBatchEMT(EMT):
    calls = itertools.count(1)

    def calculate_batch(self, structures, properties):
        call = next(self.calls)
        if len(structures) > 1 and any(92 in atoms.numbers for atoms in structures):
            raise ValueError("a batch with uranium in it")
        return [{**emt_results(atoms, properties), "batch_call": call,
                 "batch_size": len(structures)} for atoms in structures]


class GpuEMT(EMT):
    def calculate(self, *args, **kwargs):
        time.sleep(0.05)
        super().calculate(*args, **kwargs)
        self.results["gpu"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.results["threads"] = os.environ.get("OMP_NUM_THREADS", "")


class OneAtATimeEMT(EMT):
    computing = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        OneAtATimeEMT.computing += 1
        try:
            if OneAtATimeEMT.computing > 1:
                raise RuntimeError("two structures computed at once")
            time.sleep(0.02)
            super().calculate(atoms, properties, system_changes)
        finally:
            OneAtATimeEMT.computing -= 1
        buffers = self.__dict__.setdefault("buffers", {})
        forces = buffers.setdefault(len(self.atoms), np.empty((len(self.atoms), 3)))
        forces[:] = self.results["forces"]
        self.results["forces"] = forces
        self.results["pid"] = os.getpid()


@dataclasses.dataclass
class Build:
    calculator: type

    def get_calculator(self, **kwargs):
        return self.calculator()


ALL_MODELS = {"counting-emt": Build(CountingBatchEMT), "gpu-emt": Build(GpuEMT),
              "one-at-a-time-emt": Build(OneAtATimeEMT)}
