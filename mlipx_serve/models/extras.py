"""Which optional dependencies ("extras") provide which model.

pyproject.toml is the one list of extras; it is read back here from the installed
package's metadata. Both the model definitions (for install hints) and the worker (to
install what is missing) need it.
"""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

from packaging.requirements import Requirement

NOT_MODELS = ("test",)  # extras that provide no model


def _declared_extras() -> dict[str, list[str]]:
    """The extras pyproject.toml declares, read back from the installed metadata:
    extra -> its requirements, as ``pip install`` takes them.

    One list to keep up to date: a model's packages are installed by these names when
    running outside a project that declares the extras.
    """
    try:
        package = metadata.metadata("mlipx-serve")
    except metadata.PackageNotFoundError:
        return {}
    requirements = [Requirement(line) for line in package.get_all("Requires-Dist") or []]
    return {extra: [_without_marker(r) for r in requirements
                    if r.marker is not None and r.marker.evaluate({"extra": extra})]
            for extra in package.get_all("Provides-Extra") or [] if extra not in NOT_MODELS}


def _without_marker(requirement: Requirement) -> str:
    bare = copy.copy(requirement)
    bare.marker = None
    return str(bare)


EXTRAS: dict[str, list[str]] = _declared_extras()

# Top-level import name -> extra, so an entry written without ``extra=`` (every
# mlipx models file) still gets a useful install hint.
MODULE_EXTRAS: dict[str, str] = {
    "mace": "mace",
    "sevenn": "sevenn",
    "orb_models": "orb",
    "chgnet": "chgnet",
    "mattersim": "mattersim",
    "tensorpotential": "grace",
    "matgl": "matpes",
    "fairchem": "fairchem",
    "pet_mad": "pet-mad",
}


def model_extras(model: Any) -> list[str]:
    """Declared extras, else the one implied by the model's top-level package."""
    declared = list(getattr(model, "extra", None) or [])
    if declared:
        return declared
    module = getattr(model, "module", None)
    if not isinstance(module, str):
        return []
    implied = MODULE_EXTRAS.get(module.split(".")[0])
    return [implied] if implied else []
