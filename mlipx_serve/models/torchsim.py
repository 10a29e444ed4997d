"""An ASE calculator for any TorchSim model (``torch_sim.models.interface.ModelInterface``).

TorchSim models take a batch of systems in one call, so this calculator offers
``calculate_batch``, which a batching worker (``mlipx serve NAME --batch-size N``) uses;
``calculate`` is the same with a batch of one. A models file serves one like this::

    ALL_MODELS["lj-ts"] = PretrainedASECalculator(
        module="torch_sim.models.lennard_jones", class_name="LennardJonesModel",
        kwargs={"sigma": 3.4, "epsilon": 0.0104, "compute_stress": True},
        calculator="mlipx_serve.torchsim:TorchSimCalculator")
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress


class TorchSimCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        [self.results] = self.calculate_batch([self.atoms], list(properties))

    def calculate_batch(self, structures: list[Atoms], properties: list[str]) -> list[dict]:
        """Every structure in one model call; results as ASE's calculators give them."""
        from torch_sim.io import atoms_to_state

        state = atoms_to_state(structures, device=self.model.device, dtype=self.model.dtype)
        output = {name: value.detach().cpu().numpy() for name, value in self.model(state).items()}
        ends = np.cumsum([len(atoms) for atoms in structures])[:-1]
        forces = np.split(output["forces"], ends) if "forces" in output else None
        results = []
        for index, energy in enumerate(output["energy"]):
            found = {"energy": float(energy), "free_energy": float(energy)}
            if forces is not None:
                found["forces"] = forces[index]
            if "stress" in output:
                found["stress"] = full_3x3_to_voigt_6_stress(output["stress"][index])
            results.append(found)
        return results
