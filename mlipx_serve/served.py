"""The models a broker offers, as mlipx's ``Models()`` mapping, and calculators for them."""

from __future__ import annotations

import logging
import time
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


NO_BROKER_MEMORY = 30.0  # seconds a broker that did not answer is taken to be absent
_silent_since: dict[str, float] = {}  # endpoint -> when its broker last did not answer


def offered_models(broker: str, ask: bool = False) -> dict[str, dict]:
    """The models the broker at ``broker`` offers (``available_models``), none when no
    broker answers. Asking costs ``PROBE_TIMEOUT`` when none does, so a broker that did
    not answer is not asked again for ``NO_BROKER_MEMORY`` seconds unless ``ask``; that
    none answers is said once, until one does."""
    silent_since = _silent_since.get(broker)
    if not ask and silent_since is not None and \
            time.monotonic() - silent_since < NO_BROKER_MEMORY:
        return {}
    status = get_broker_status(broker)
    if status["running"]:
        _silent_since.pop(broker, None)
        return available_models(status)
    if silent_since is None:
        log.warning("no model broker answers at %s, so it offers no models; start one with "
                    "`mlipx serve-broker --autostart`", broker)
    _silent_since[broker] = time.monotonic()
    return {}


class Models(Mapping):
    """The models the broker offers: those with workers, and those it can start.

    A snapshot, refreshed by ``refresh()``, and by itself when a name it lacks is asked
    for (a worker may have come since). Without a broker it is empty (``name in models``
    is False), and says so once (``offered_models``).
    """

    def __init__(self, broker: str | None = None):
        self.broker = chosen_broker(broker)
        self._models = offered_models(self.broker)

    def refresh(self) -> None:
        """Ask the broker again, even one that did not answer a moment ago."""
        self._models = offered_models(self.broker, ask=True)

    def __getitem__(self, name: str) -> ServedModel:
        if name not in self._models:
            self._models = offered_models(self.broker)
        if name not in self._models:
            if self.broker in _silent_since:
                raise KeyError(f"no model broker answers at {self.broker}, so it offers no "
                               f"model '{name}'; start one with `mlipx serve-broker "
                               f"--autostart`")
            known = ", ".join(self._models) or "none"
            raise KeyError(f"the broker at {self.broker} offers no model '{name}' "
                           f"(offered: {known})")
        return ServedModel(name, self.broker, self._models[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)
