"""The models a broker offers, as mlipx's ``Models()`` mapping, and calculators for them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ase import Atoms

from .broker_status import available_models, get_broker_status
from .calculator import RemoteCalculator
from .errors import EndpointError
from .mapping import DEFAULT_PROPERTIES, map_structures
from .paths import chosen_broker

log = logging.getLogger("mlipx_serve")


def served_calculator_or_none(name: str | None, broker: str | None = None,
                              **kwargs: Any) -> RemoteCalculator | None:
    """A calculator for the served model ``name``, or None (with the reason logged)."""
    try:
        broker = chosen_broker(broker)
    except EndpointError as error:
        log.warning("%s", error)
        return None
    if not name:
        log.warning("a model without a name cannot be served")
        return None
    status = get_broker_status(broker)
    if not status["running"]:
        log.warning("no model broker answers at %s (%s); start one with "
                    "`mlipx serve-broker --autostart`", broker, status["error"])
        return None
    if name not in available_models(status):
        log.warning("the broker at %s has no worker for model '%s' and cannot start one; "
                    "start one with `mlipx serve %s`", broker, name, name)
        return None
    if kwargs:
        log.warning("calculator arguments %s are ignored: the served model '%s' was built "
                    "by its worker", sorted(kwargs), name)
    return RemoteCalculator(name, broker)


class ServedModel:
    """One entry of ``Models()``: what mlipx's model objects offer, served."""

    def __init__(self, name: str, broker: str, info: dict):
        self.name = name
        self.broker = broker
        self.info = info

    def get_calculator(self, **kwargs: Any) -> RemoteCalculator:
        return RemoteCalculator(self.name, self.broker, **kwargs)

    def map(self, structures: Iterable[Atoms],
            properties: Sequence[str] = DEFAULT_PROPERTIES, **options: Any) -> Iterator[Atoms]:
        """Each structure with its results, many in flight at once (``map_structures``)."""
        return map_structures(self.name, structures, properties, broker=self.broker, **options)

    def __repr__(self) -> str:
        return f"ServedModel({self.name!r}, broker={self.broker!r})"


class Models(Mapping):
    """The models the broker offers: those with workers, and those it can start.

    A snapshot, refreshed by ``refresh()``, and by itself when a name it lacks is asked
    for (a worker may have come since).
    """

    def __init__(self, broker: str | None = None):
        self.broker = chosen_broker(broker)
        self.refresh()

    def refresh(self) -> None:
        self._models = available_models(get_broker_status(self.broker))

    def __getitem__(self, name: str) -> ServedModel:
        if name not in self._models:
            self.refresh()
        if name not in self._models:
            known = ", ".join(self._models) or "none"
            raise KeyError(f"the broker at {self.broker} offers no model '{name}' "
                           f"(offered: {known})")
        return ServedModel(name, self.broker, self._models[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)
