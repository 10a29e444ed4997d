"""The serving half of a model definition: ``get_calculator()`` that prefers the served model.

``mlipx_serve.GenericASECalculator`` is the definition of ``models/`` with this
``get_calculator``; ``mlipx_glue`` gives it to mlipx's own class, whose nodes call
``model.get_calculator()``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from ase.calculators.calculator import Calculator

from mlipx_serve import environment
from mlipx_serve.client.served import served_calculator_or_none
from mlipx_serve.models import definitions

logger = logging.getLogger(__name__)


def use_serve_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Read MLIPX_USE_SERVE; an unrecognised value is reported, not guessed at."""
    use_serve = environment.flag(environment.USE_SERVE, environ)
    if use_serve is None:
        logger.warning(
            "%s=%r is not understood (use 1/true/yes/on or 0/false/no/off); not serving",
            environment.USE_SERVE,
            environment.text(environment.USE_SERVE, environ),
        )
    return bool(use_serve)


class Servable(definitions.Definable):
    """A definition whose ``get_calculator()`` prefers the served model."""

    def get_calculator(self, use_serve: bool | None = None, **kwargs: Any) -> Calculator:
        """Served calculator when asked for and reachable, else a local one.

        ``use_serve=None`` follows ``MLIPX_USE_SERVE``. The served model is exactly this
        definition (with ``kwargs``), whatever its name: one served under the same name
        but defined otherwise is never used. Falling back rather than failing keeps
        scripts running when no broker is up; one warning says why, because the run is
        then slower or uses local memory. A served model whose worker then fails to start
        falls back too, at its first calculation.
        """
        if use_serve is None:
            use_serve = use_serve_from_env()
        if use_serve:
            served = served_calculator_or_none(
                self, call_kwargs=kwargs, fallback=lambda: self.build_local_calculator(**kwargs))
            if served is not None:
                return served
        return self.build_local_calculator(**kwargs)


@dataclasses.dataclass
class GenericASECalculator(Servable, definitions.GenericASECalculator):
    __doc__ = definitions.GenericASECalculator.__doc__ + """
    ``get_calculator(use_serve=None, **kwargs)`` returns the served model when
    ``use_serve`` (default: ``$MLIPX_USE_SERVE``) is true and a broker serves it or can
    start it, else the local calculator, with a warning saying why.
    """
    BUILDS_FROM_FIELDS = True  # what definitions.Definable._builds_like compares with
