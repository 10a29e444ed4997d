"""Opt-in: the TorchSim adapter, with TorchSim's Lennard-Jones model (no weights).

Run with ``pytest -m mlip``; skipped when torch_sim is not installed
(``pip install torch==2.13.0 torch-sim-atomistic``).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

pytest.importorskip("torch_sim")

from mlipx_serve.models.torchsim import TorchSimCalculator  # noqa: E402

pytestmark = [pytest.mark.mlip, pytest.mark.timeout(120)]


def argon(i: int):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True) * (1 + i % 2, 1, 1)
    atoms.rattle(0.1, seed=i)
    return atoms


@pytest.fixture(scope="module")
def calc() -> TorchSimCalculator:
    import torch
    from torch_sim.models.lennard_jones import LennardJonesModel

    model = LennardJonesModel(sigma=3.405, epsilon=0.0104, cutoff=8.0, dtype=torch.float64,
                              device=torch.device("cpu"), compute_stress=True)
    return TorchSimCalculator(model)


def test_a_batch_equals_each_structure_alone(calc):
    structures = [argon(i) for i in range(5)]
    batched = calc.calculate_batch(structures, ["energy", "forces", "stress"])
    for atoms, together in zip(structures, batched, strict=True):
        atoms.calc = calc
        assert together["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(together["forces"], atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(together["stress"], atoms.get_stress(), atol=1e-10)
        assert together["forces"].shape == (len(atoms), 3)
    assert abs(batched[0]["energy"] - batched[1]["energy"]) > 1e-6  # not one result five times
