"""Which optional dependencies ("extras") provide which model.

pyproject.toml is the one list of extras; it is read back here from the installed
package's metadata. Both the model definitions (``generic``, for install hints) and the
worker (``serve``, to install what is missing) need it, so it belongs to neither.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any


def _declared_extras() -> dict[str, list[str]]:
    """The extras pyproject.toml declares, read back from the installed metadata.

    One list to keep up to date: a model's packages are installed by these names when
    running outside a project that declares the extras.
    """
    try:
        requirements = metadata.requires("mlipx-serve") or []
    except metadata.PackageNotFoundError:
        return {}
    extras: dict[str, list[str]] = {}
    for line in requirements:
        requirement, _, marker = line.partition(";")
        match = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if match and match.group(1) != "test":
            extras.setdefault(match.group(1), []).append(requirement.strip())
    return extras


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
