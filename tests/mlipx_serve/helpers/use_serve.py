"""Says which calculator a model lookup gives under the current MLIPX_USE_SERVE."""

from __future__ import annotations

from ase.build import bulk

from mlipx_serve import GenericASECalculator

model = GenericASECalculator(module="ase.calculators.emt", class_name="EMT", name="emt")
calc = model.get_calculator()
atoms = bulk("Cu", cubic=True)
atoms.calc = calc
print(type(calc).__name__, repr(float(atoms.get_potential_energy())))
