"""What the real mlipx gains when it is imported beside mlipx-serve (see ``mlipx_hook``).

Each function takes the mlipx module that has just loaded and extends it in place. They
are idempotent, and they stand down where mlipx already has what they would add.
"""

from __future__ import annotations

import dataclasses
import logging
from types import ModuleType
from typing import Any

from ase.calculators.calculator import Calculator

from mlipx_serve.client.servable import Servable
from mlipx_serve.models.definitions import serving_settings
from mlipx_serve.models.extras import model_extras
from mlipx_serve.wire.definition import Definition, check_name

log = logging.getLogger(__name__)

EXTENDED = "_mlipx_serve_extended"


def extend_generic_ase(module: ModuleType) -> None:
    """Give ``mlipx.nodes.generic_ase.GenericASECalculator`` a ``name``, an ``extra`` and
    ``serving`` settings, and a ``get_calculator(use_serve=None)`` that follows
    ``MLIPX_USE_SERVE``.

    The class is replaced by a dataclass subclass under the same module and name, so
    that models files, zntrack's params (which name the class by module and name) and
    ``isinstance`` checks against the original all keep working, and mlipx's nodes,
    which call ``model.get_calculator()``, get the served model when it is asked for.
    """
    original = module.GenericASECalculator
    fields = {field.name for field in dataclasses.fields(original)}
    if getattr(original, EXTENDED, False) or {"name", "extra"} <= fields:
        return

    @dataclasses.dataclass
    class GenericASECalculator(Servable, original):
        name: str | None = None
        extra: list[str] | None = None
        serving: dict[str, Any] | None = None

        def __post_init__(self) -> None:
            getattr(super(), "__post_init__", lambda: None)()
            serving_settings(self)  # unknown or malformed settings: an error at once
            if self.name is not None:
                check_name(self.name)

        def build_local_calculator(self, **kwargs: Any) -> Calculator:
            """mlipx's own ``get_calculator``: what this model is without serving."""
            return original.get_calculator(self, **kwargs)

        def definition(self, **kwargs: Any) -> Definition:
            """As mlipx builds it: its ``kwargs`` win over the call's, and the device
            (not part of what the model is), its field or else a ``device`` among the
            arguments, comes apart from them, as ours does."""
            self._builds_like(GenericASECalculator)
            arguments = {**kwargs, **(self.kwargs or {})}
            device = arguments.pop("device", None)
            return Definition.generic(self.module, self.class_name, arguments, name=self.name,
                                      device=self.device if self.device else device,
                                      extra=tuple(model_extras(self)),
                                      serving=serving_settings(self).to_json())

    GenericASECalculator.__module__ = module.__name__
    GenericASECalculator.__qualname__ = original.__qualname__
    GenericASECalculator.__doc__ = (original.__doc__ or "") + _ADDED_DOC
    setattr(GenericASECalculator, EXTENDED, True)
    module.GenericASECalculator = GenericASECalculator
    log.debug("extended %s.GenericASECalculator for serving", module.__name__)


_ADDED_DOC = """
    Added by mlipx-serve (``MLIPX_SERVE_HOOK=0`` turns it off):

    name : str, default=None
        The served model's name (its MDP service). A model is served only as exactly what
        it is defined to be (module, class and kwargs): one defined otherwise than what
        the broker serves under its name, or without a name, gets a service of its own
        (``NAME@fingerprint``), which an autostarting broker starts from this definition.
    extra : list[str], default=None
        The optional-dependency groups that provide ``module`` (e.g. ["mace"]).
    serving : dict, default=None
        How the model is served: batch_size, batch_wait, max_workers, prefetch, gpus
        ("all" or GPU numbers), worker_timeout (README, "Serving settings per model").

    ``get_calculator(use_serve=None, **kwargs)`` returns the served model when
    ``use_serve`` (default: ``$MLIPX_USE_SERVE``) is true and a broker serves it or can
    start it, else the local calculator, with a warning saying why.
"""


def add_serve_commands(module: ModuleType) -> None:
    """Add the serve commands (``cli.SERVE_COMMANDS``) to mlipx's command line."""
    from mlipx_serve.cli.main import add_commands

    add_commands(module.app)
