"""Computing one request: the model's calculator, loaded once, asked for a structure's
properties, and the heap settled after loading it."""

from __future__ import annotations

import copy
import gc
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from mlipx_serve import environment
from mlipx_serve.models.changes import changes

log = logging.getLogger(__name__)


def compute(calc: Calculator, atoms: Atoms, properties: list[str],
            optional: Sequence[str] = ()) -> dict[str, Any]:
    """``calc.results`` for a request's atoms: the first property asked for computes them,
    a later one only when the results lack it (``get_property`` returns a copy of each
    array, thrown away here); an ``optional`` one only where the model implements it, and
    one that fails then is left out, failing nothing. ``build_calculator`` gives the
    calculator a cheap change check (``changes``) that counts the positions as moved
    without a look, since every request brings atoms of its own, and keeps what a
    calculator set up for the system when only they moved (EMT's neighbour lists:
    forgetting them cost 6 ms of 9 ms for 32 atoms)."""
    implemented = getattr(calc, "implemented_properties", ())
    extra = [prop for prop in optional if prop in implemented and prop not in properties]
    for index, prop in enumerate([*properties, *extra]):
        if index and prop in calc.results:
            continue
        try:
            calc.get_property(prop, atoms if index == 0 else None)
        except Exception:
            if index < len(properties):
                raise
            log.debug("optional property %r failed; left out", prop, exc_info=True)
    return calc.results if properties or extra else {}


def build_calculator(model: object) -> Calculator:
    """The model's local calculator, with a cheap change check (see ``compute``); a
    worker must never try to be served itself."""
    os.environ[environment.USE_SERVE] = "false"
    build = getattr(model, "build_local_calculator", None)
    calc = build() if build is not None else model.get_calculator()
    calc.check_state = lambda atoms, tol=None: changes(calc.atoms, atoms, assume_moved=True)
    return calc


def settle_heap() -> None:
    """Collect what loading the model left behind, and exempt the rest, the model, from
    later garbage collections: with CHGNet loaded a full collection scanned 300,000
    objects for 160 ms, and came every 20 or so structures, a pause in the middle of
    someone's request each time."""
    gc.collect()
    gc.freeze()


def owned(results: Mapping[str, Any]) -> dict[str, Any]:
    """Copies of a calculator's results, which it may fill again for the next structure
    while these are still on their way (a reply's frames are views of its arrays)."""
    return {name: copy.copy(value) for name, value in results.items()}
