"""Model registries: the built-in models, and ``models.py`` files written for mlipx.

A registry maps a model name (the MDP service name) to an object with
``get_calculator()``. Files are read the way mlipx reads them: their
``ALL_MODELS`` mapping. The key is the name; an entry's own ``name`` attribute is
only filled in when it is unset, because some entries use ``name`` for something
else (mlipx's ``OrbCalc.name`` is the orb-models loader, e.g. ``"orb_v2"``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import logging
import os
import sys
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlipx_serve import environment
from mlipx_serve.errors import ModelUnavailableError, RegistryError
from mlipx_serve.models.definitions import Device, GenericASECalculator, PretrainedASECalculator
from mlipx_serve.wire.definition import resolve_paths

logger = logging.getLogger(__name__)



def _mace(model: str, spec: str | None = None) -> GenericASECalculator:
    return GenericASECalculator(
        module="mace.calculators",
        class_name="mace_mp",
        kwargs={"model": model},
        device=Device.AUTO,
        spec=spec,
        extra=["mace"],
    )


def _sevenn(**kwargs: Any) -> GenericASECalculator:
    # mlipx imports sevenn.sevennet_calculator, a deprecated alias that warns.
    return GenericASECalculator(
        module="sevenn.calculator",
        class_name="SevenNetCalculator",
        kwargs=kwargs,
        device=Device.AUTO,
        extra=["sevenn"],
    )


def _orb(loader: str) -> PretrainedASECalculator:
    return PretrainedASECalculator(
        module="orb_models.forcefield.pretrained",
        class_name=loader,
        device=Device.AUTO,
        calculator="orb_models.forcefield.calculator:ORBCalculator",
        calculator_takes_device=True,
        extra=["orb"],
    )


def _builtin_models() -> dict[str, Any]:
    """mlipx's ``models.py.jinja2`` list, with downloadable weights, plus two without ML.

    mlipx points several entries at files in its "mlipx-hub" checkout
    (``../../models/...``); here they name the published weights that the
    package downloads itself, so they work from any directory. mlipx's "orca"
    entry is left out: it drives the ORCA program, not an MLIP.
    """
    models: dict[str, Any] = {
        "mace-mpa-0": _mace("medium-mpa-0", spec="mace-mpa-0"),
        "mace-mp-0": _mace("medium"),
        "mace-matpes-pbe-0": _mace("mace-matpes-pbe-0"),
        "7net-0": _sevenn(model="7net-0"),
        "7net-mf-ompa-mpa": _sevenn(model="7net-mf-ompa", modal="mpa"),
        "orb-v2": _orb("orb_v2"),
        "orb-v3": _orb("orb_v3_conservative_inf_omat"),
        "chgnet": GenericASECalculator(
            module="chgnet.model", class_name="CHGNetCalculator", spec="chgnet", extra=["chgnet"]
        ),
        "mattersim": GenericASECalculator(
            module="mattersim.forcefield",
            class_name="MatterSimCalculator",
            device=Device.AUTO,
            spec="mattersim",
            extra=["mattersim"],
        ),
        "grace-2l-omat": GenericASECalculator(
            module="tensorpotential.calculator",
            class_name="grace_fm",
            kwargs={"model": "GRACE-2L-OMAT"},
            spec="grace-2l-omat",
            extra=["grace"],
        ),
        "matpes-pbe": PretrainedASECalculator(
            module="matgl",
            class_name="load_model",
            kwargs={"path": "TensorNet-MatPES-PBE-v2025.1-PES"},
            # PESCalculator defaults to GPa; ASE expects eV/A^3.
            calculator="matgl.ext.ase:PESCalculator",
            calculator_kwargs={"stress_unit": "eV/A3"},
            extra=["matpes"],
        ),
        # Gated on Hugging Face: accept the licence and `hf auth login` first.
        "meta-uma-sm": PretrainedASECalculator(
            module="fairchem.core.calculate.pretrained_mlip",
            class_name="get_predict_unit",
            kwargs={"model_name": "uma-s-1p1"},
            device=Device.AUTO,
            calculator="fairchem.core:FAIRChemCalculator",
            calculator_kwargs={"task_name": "oc20"},
            extra=["fairchem"],
        ),
        "pet-mad": GenericASECalculator(
            module="pet_mad.calculator",
            class_name="PETMADCalculator",
            kwargs={"version": "latest"},
            device=Device.AUTO,
            spec="pet-mad",
            extra=["pet-mad"],
        ),
        "emt": GenericASECalculator(module="ase.calculators.emt", class_name="EMT"),
        "lj": GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones"),
    }
    return {key: _with_name(model, key) for key, model in models.items()}


def load_registry(models_files: Sequence[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """Built-in models overridden by each file in turn (later files win)."""
    if models_files is None:
        models_files = models_files_from_env()
    registry = dict(BUILTIN_MODELS)
    for path in models_files:
        registry.update(load_models_file(path))
    return registry


def models_files_from_env() -> list[str]:
    return environment.paths(environment.MODELS)


def load_models_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute a ``models.py`` and return its ``ALL_MODELS`` with names filled in."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise RegistryError(f"models file {str(file)!r} does not exist")
    namespace = _execute(file)
    if "ALL_MODELS" not in namespace:
        raise RegistryError(f"models file {str(file)!r} defines no ALL_MODELS mapping")
    models = namespace["ALL_MODELS"]
    if not isinstance(models, Mapping):
        raise RegistryError(
            f"models file {str(file)!r}: ALL_MODELS is a {type(models).__name__}, not a mapping"
        )
    return {key: _with_paths_from(file.parent, _checked_entry(file, key, entry))
            for key, entry in models.items()}


def _checked_entry(file: Path, key: Any, entry: Any) -> Any:
    if not isinstance(key, str) or not key:
        raise RegistryError(f"models file {str(file)!r}: ALL_MODELS key {key!r} is not a name")
    if not callable(getattr(entry, "get_calculator", None)):
        raise RegistryError(
            f"models file {str(file)!r}: ALL_MODELS[{key!r}] is a {type(entry).__name__} "
            "without a get_calculator() method"
        )
    return _with_name(_adopt_mlipx_entry(entry), key)


def _with_paths_from(directory: Path, entry: Any) -> Any:
    """A definition whose relative paths (a checkpoint beside the models file) are made
    absolute against the file's directory, so that every process opens the same file,
    whatever its working directory (``definition.resolve_paths``)."""
    if not isinstance(entry, GenericASECalculator):
        return entry
    resolved = {"kwargs": resolve_paths(entry.kwargs or {}, directory)}
    if isinstance(entry, PretrainedASECalculator):
        resolved["calculator_kwargs"] = resolve_paths(entry.calculator_kwargs, directory)
    return dataclasses.replace(entry, **resolved)


_counter = itertools.count()
_load_lock = threading.RLock()  # a models file may load another


def _execute(file: Path) -> dict[str, Any]:
    """Run the file as a fresh module and hand back its globals.

    The module sits in ``sys.modules`` only while it runs (dataclasses look their
    module up there). Removing it afterwards makes cloudpickle ship the file's
    classes by value, so a worker process can rebuild an entry without the file.
    """
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:12]
    name = f"mlipx_serve._models_{digest}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise RegistryError(f"models file {str(file)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    with _load_lock, _mlipx_names_available():
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise RegistryError(
                f"models file {str(file)!r} failed to run: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            sys.modules.pop(name, None)
    return vars(module)


def _with_name(entry: Any, key: str) -> Any:
    """Return the entry with ``name`` set to its key when unset.

    A copy is named, never the original: one object may sit under two keys.
    Frozen dataclasses go through ``dataclasses.replace``; objects that refuse a
    ``name`` (slots, read-only properties) are returned as they are.
    """
    try:
        if getattr(entry, "name", None) is not None:
            return entry
    except Exception:  # a property that raises: not ours to touch
        return entry
    if _has_init_field(entry, "name"):
        try:
            return dataclasses.replace(entry, name=key)
        except (TypeError, ValueError):
            pass
    return _copy_with_name(entry, key)


def _has_init_field(entry: Any, field: str) -> bool:
    if not dataclasses.is_dataclass(entry) or isinstance(entry, type):
        return False
    return any(f.name == field and f.init for f in dataclasses.fields(entry))


def _copy_with_name(entry: Any, key: str) -> Any:
    try:
        named = copy.copy(entry)
        object.__setattr__(named, "name", key)
    except (AttributeError, TypeError, copy.Error):
        logger.debug("cannot set name %r on %s; leaving it unnamed", key, type(entry).__name__)
        return entry
    return named


def _adopt_mlipx_entry(entry: Any) -> Any:
    """Turn a real ``mlipx.GenericASECalculator`` into ours, field for field.

    With mlipx installed, a models file builds mlipx's class: without ``mlipx_plugin``
    (``MLIPX_SERVE_HOOK=0``) it has neither ``name`` nor ``extra`` and cannot serve, and
    either way ours builds the calculator without torch for ``device="auto"``.
    """
    cls = type(entry)
    if cls.__name__ != "GenericASECalculator" or not cls.__module__.startswith("mlipx."):
        return entry
    return GenericASECalculator(
        module=entry.module,
        class_name=entry.class_name,
        kwargs=dict(entry.kwargs or {}),
        device=entry.device,
        spec=getattr(entry, "spec", None),
        name=getattr(entry, "name", None),
        extra=list(getattr(entry, "extra", None) or []),
    )


# -- mlipx compatibility shim -------------------------------------------------------

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


def _mlipx_installed() -> bool:
    if "mlipx" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("mlipx") is not None
    except (ImportError, ValueError):
        return False


@contextmanager
def _mlipx_names_available() -> Iterator[None]:
    """Make ``import mlipx`` work for the duration of one load, if mlipx is absent.

    Scoped, not permanent: a lasting fake ``mlipx`` in ``sys.modules`` would tell
    any other code in the process that mlipx is installed and then lack most of
    it. Names a file binds while loading (``mlipx``, ``Device``) stay bound in that
    file's globals, so its methods keep working afterwards; only an ``import
    mlipx`` deferred into a method body would miss the shim.
    """
    if _mlipx_installed():
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


BUILTIN_MODELS: dict[str, Any] = _builtin_models()
