"""Models that evaluate many structures in one call (``calculate_batch(atoms_list,
properties) -> list[dict]``, a failed structure an exception in its slot): a calculator's
own, as TorchSim's (``models.torchsim``) has, or an adapter's for a calculator that has
none but can (CHGNet's batched ``predict_graph``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

BatchFunction = Callable[[list[Atoms], list[str]], list[Any]]


def batch_function(calc: Calculator) -> BatchFunction | None:
    """How ``calc`` evaluates a list of structures in one call, or None if it cannot."""
    own = getattr(calc, "calculate_batch", None)
    if callable(own):
        return own
    adapter = ADAPTERS.get(f"{type(calc).__module__}.{type(calc).__name__}")
    return None if adapter is None else adapter(calc).calculate_batch


class CHGNetBatch:
    """``calculate_batch`` for CHGNet's ASE calculator: its own batched prediction,
    converted the way the calculator converts one structure."""

    def __init__(self, calc: Calculator):
        self.calc = calc

    def calculate_batch(self, structures: list[Atoms], properties: list[str]) -> list[Any]:
        from pymatgen.io.ase import AseAtomsAdaptor

        calc, model = self.calc, self.calc.model
        graphs: list[Any] = []
        for atoms in structures:
            try:
                graphs.append(model.graph_converter(AseAtomsAdaptor.get_structure(atoms)))
            except Exception as error:  # e.g. isolated atoms, with on_isolated_atoms="error"
                graphs.append(error)
        good = [graph for graph in graphs if not isinstance(graph, Exception)]
        predicted = model.predict_graph(good, task="efsm", return_crystal_feas=True,
                                        return_site_energies=calc.return_site_energies,
                                        batch_size=max(1, len(good))) if good else []
        predicted = iter([predicted] if isinstance(predicted, dict) else predicted)
        return [graph if isinstance(graph, Exception) else
                _chgnet_results(calc, len(atoms), next(predicted))
                for atoms, graph in zip(structures, graphs, strict=True)]


def _chgnet_results(calc: Calculator, count: int, prediction: dict) -> dict[str, Any]:
    factor = count if calc.model.is_intensive else 1
    results = {"energy": prediction["e"] * factor, "forces": prediction["f"],
               "stress": prediction["s"] * calc.stress_weight, "magmoms": prediction["m"],
               "crystal_fea": prediction["crystal_fea"]}
    results["free_energy"] = results["energy"]
    if calc.return_site_energies:
        results["energies"] = prediction["site_energies"]
    return results


ADAPTERS: dict[str, Callable[[Calculator], Any]] = {
    "chgnet.model.dynamics.CHGNetCalculator": CHGNetBatch,
}
