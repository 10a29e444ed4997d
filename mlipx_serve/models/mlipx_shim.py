"""Loading an mlipx ``models.py`` where mlipx is not installed: ``import mlipx`` works for
the time of one load, with our ``GenericASECalculator`` and ``Device`` under mlipx's names,
and placeholders that explain for the other mlipx classes a file may build."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlipx_serve.errors import ModelUnavailableError
from mlipx_serve.models.definitions import Device, GenericASECalculator

# The names mlipx exports at top level (mlipx 0.1.5 ``__all__``) other than
# GenericASECalculator: a models file may build them (the template's "orca" entry
# uses OrcaSinglePoint). Without mlipx they load as placeholders that explain.
# fmt: off
_MLIPX_ONLY_NAMES = frozenset(
    {
        "ApplyCalculator", "BuildASEslab", "BuildBox", "CalculateFormationEnergy",
        "CompareCalculatorResults", "CompareFormationEnergy", "EnergyVolumeCurve",
        "EvaluateCalculatorResults", "FilterAtoms", "HomonuclearDiatomics",
        "LangevinConfig", "LoadDataFile", "MPRester", "MaximumForceObserver",
        "MolecularDynamics", "NEBinterpolate", "NEBs", "OrcaSinglePoint",
        "PermutationInvariance", "PhaseDiagram", "PourbaixDiagram", "Project", "Rattle",
        "RelaxAdsorptionConfigs", "RotationalInvariance", "Smiles2Conformers",
        "StructureOptimization", "TemperatureRampModifier", "TranslationalInvariance",
        "UpdateFramesCalc", "VibrationalAnalysis",
    }
)
# fmt: on


class MlipxOnlyNode:
    """Stands in for an mlipx class the shim does not provide.

    Loading succeeds so the file's other models stay usable; only asking this
    entry for a calculator fails, and says what to install.
    """

    def __init__(self, class_name: str, *args: Any, **kwargs: Any) -> None:
        self.class_name = class_name
        self.args = args
        self.kwargs = kwargs
        self.name: str | None = None

    def get_calculator(self, **kwargs: Any) -> Any:
        raise ModelUnavailableError(
            f"model {self.name!r} is an mlipx.{self.class_name}, which needs the full mlipx "
            "package: run `uv pip install mlipx`",
            module="mlipx",
            extras=[],
            model=self.name,
        )

    def __repr__(self) -> str:
        return f"MlipxOnlyNode({self.class_name!r}, name={self.name!r})"


def _placeholder_factory(class_name: str) -> Any:
    def build(*args: Any, **kwargs: Any) -> MlipxOnlyNode:
        return MlipxOnlyNode(class_name, *args, **kwargs)

    build.__name__ = class_name
    return build


def _mlipx_getattr(attr: str) -> Any:
    if attr in _MLIPX_ONLY_NAMES:
        return _placeholder_factory(attr)
    raise AttributeError(
        f"the mlipx compatibility shim of mlipx-serve has no {attr!r}; "
        "install mlipx (`uv pip install mlipx`) to use it in a models file"
    )


def _shim_modules() -> dict[str, types.ModuleType]:
    root = types.ModuleType("mlipx", "mlipx-serve's stand-in for mlipx, used while loading.")
    nodes = types.ModuleType("mlipx.nodes")
    generic_ase = types.ModuleType("mlipx.nodes.generic_ase")
    root.__path__ = []  # packages, so that `import mlipx.nodes.generic_ase` resolves
    nodes.__path__ = []
    generic_ase.GenericASECalculator = GenericASECalculator
    generic_ase.Device = Device
    root.GenericASECalculator = GenericASECalculator
    root.__getattr__ = _mlipx_getattr
    root.nodes = nodes
    nodes.generic_ase = generic_ase
    return {"mlipx": root, "mlipx.nodes": nodes, "mlipx.nodes.generic_ase": generic_ase}


def mlipx_installed() -> bool:
    if "mlipx" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("mlipx") is not None
    except (ImportError, ValueError):
        return False


@contextmanager
def mlipx_names_available() -> Iterator[None]:
    """Make ``import mlipx`` work for the duration of one load, if mlipx is absent.

    Scoped, not permanent: a lasting fake ``mlipx`` in ``sys.modules`` would tell
    any other code in the process that mlipx is installed and then lack most of
    it. Names a file binds while loading (``mlipx``, ``Device``) stay bound in that
    file's globals, so its methods keep working afterwards; only an ``import
    mlipx`` deferred into a method body would miss the shim.
    """
    if mlipx_installed():
        yield
        return
    shim = _shim_modules()
    sys.modules.update(shim)
    try:
        yield
    finally:
        for name, module in shim.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
