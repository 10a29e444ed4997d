"""A served calculator keeps ASE's calculator contract as the model's own calculator
does: a convenience the model cannot give fails nothing, and from its first answer on it
says of itself what the model's calculator says (name, implemented properties, parameters),
with results of the same types. Real broker, workers and ASE calculators."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.tip3p import TIP3P
from ase.db import connect

from mlipx_serve import GenericASECalculator, RemoteCalculator

pytestmark = pytest.mark.timeout(120)

EXACT = 1e-12


@pytest.fixture
def use_bus(bus: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's autostart broker as this process's default one."""
    monkeypatch.setenv("MLIPX_SERVE_BROKER", bus)
    return bus


def served(system, bus: str) -> int:
    return system.service(bus, "emt")["served"]


def wire() -> Atoms:
    """A cell periodic in one direction only: the served calculator asks for no stress."""
    atoms = bulk("Cu", cubic=True) * (3, 1, 1)
    atoms.pbc = [True, False, False]
    atoms.rattle(0.03, seed=5)
    return atoms


def water_box() -> Atoms:
    """Eight waters, periodic in all directions: TIP3P has energy and forces, no stress."""
    box = Atoms(cell=[9.0, 9.0, 9.0], pbc=True)
    for index in range(8):
        water = molecule("H2O")  # (O first, as TIP3P wants)
        water.positions += 1.5 + 4.5 * np.array([index % 2, index // 2 % 2, index // 4])
        box += water
    box.rattle(0.02, seed=6)
    return box


def test_a_cell_periodic_in_one_direction_gives_what_the_model_gives(bus: str):
    atoms, local = wire(), wire()
    local.calc = EMT()
    with RemoteCalculator("emt", bus) as calc:
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(local.get_potential_energy(),
                                                             abs=EXACT)
        assert set(calc.results) == set(local.calc.results)  # (whatever EMT computes)
        for name, value in local.calc.results.items():
            np.testing.assert_allclose(calc.results[name], value, rtol=0, atol=EXACT)
        np.testing.assert_allclose(atoms.get_stress(), local.get_stress(), rtol=0, atol=EXACT)


def test_a_model_without_stress_gives_its_energy_on_a_periodic_cell(use_bus: str):
    model = GenericASECalculator(module="ase.calculators.tip3p", class_name="TIP3P",
                                 kwargs={"rc": 4.0})
    calc = model.get_calculator(use_serve=True)
    assert isinstance(calc, RemoteCalculator)
    atoms, local = water_box(), water_box()
    local.calc = TIP3P(rc=4.0)
    with calc:
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(local.get_potential_energy(),
                                                             abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), local.get_forces(), rtol=0, atol=1e-9)
        assert calc.implemented_properties == TIP3P().implemented_properties


def test_after_its_first_answer_it_is_the_models_own_in_what_it_says(
        bus: str, shared_system, tmp_path):
    atoms, local = bulk("Cu", cubic=True), bulk("Cu", cubic=True)
    local.calc = EMT()
    with RemoteCalculator("emt", bus) as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        assert calc.name == local.calc.name == "emt"
        assert calc.implemented_properties == local.calc.implemented_properties
        assert calc.parameters == local.calc.parameters
        assert calc.todict() == local.calc.todict()
        assert type(energy) is type(local.get_potential_energy())
        assert all(value.flags.writeable for value in calc.results.values()
                   if isinstance(value, np.ndarray))
        before = served(shared_system, bus)
        with pytest.raises(PropertyNotImplementedError):
            atoms.get_charges()  # EMT lists none: known here, no request
        assert served(shared_system, bus) == before
        with connect(tmp_path / "results.db") as db:
            row = db.get(db.write(atoms))
    assert row.calculator == "emt" and row.calculator_parameters == {}
    assert row.energy == pytest.approx(energy, abs=EXACT)
