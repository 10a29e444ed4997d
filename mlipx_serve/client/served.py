"""The models a broker offers, as mlipx's ``Models()`` mapping, and calculators for them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from mlipx_serve.client.broker_status import available_models, closest_names, recent_status
from mlipx_serve.client.calculator import RemoteCalculator
from mlipx_serve.client.mapping import DEFAULT_PROPERTIES, map_structures
from mlipx_serve.client.routing import route
from mlipx_serve.errors import EndpointError, NotServed
from mlipx_serve.wire.endpoints import chosen_broker, start_broker

log = logging.getLogger(__name__)


def served_calculator_or_none(model: Any, broker: str | None = None, *,
                              call_kwargs: Mapping[str, Any] | None = None,
                              fallback: Callable[[], Calculator] | None = None
                              ) -> RemoteCalculator | None:
    """A calculator for the served model, or None, with one warning saying why the model
    is then computed locally and what would serve it.

    ``model`` is a definition (``GenericASECalculator`` and the like: exactly that model,
    called with ``call_kwargs``, whatever service serves it), or a name (whatever the
    broker serves under it). ``fallback`` builds the local calculator that the served one
    turns to, with a warning, if the model's worker fails to start or turns out to serve
    another model.
    """
    try:
        return served_calculator(model, broker, call_kwargs=call_kwargs, fallback=fallback)
    except (NotServed, EndpointError) as why:
        label = model if isinstance(model, str) else model.label()
        log.warning("model '%s' is computed locally: %s", label, why)
        return None


def served_calculator(model: Any, broker: str | None = None, *,
                      call_kwargs: Mapping[str, Any] | None = None,
                      fallback: Callable[[], Calculator] | None = None) -> RemoteCalculator:
    """``served_calculator_or_none``, raising ``NotServed`` instead of returning None."""
    broker = chosen_broker(broker)
    service, definition = route(model, broker, call_kwargs)
    return RemoteCalculator(service, broker, definition=definition,
                            fallback=fallback if definition is not None else None)


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


_said_silent: set[str] = set()  # endpoints whose silence was said, until they answer


def offered_models(broker: str, ask: bool = False) -> dict[str, dict]:
    """The models the broker at ``broker`` offers (``available_models``), none when no
    broker answers (asked again only after a while unless ``ask``: ``recent_status``),
    which is said once, until one does."""
    status = recent_status(broker, ask)
    if status["running"]:
        _said_silent.discard(broker)
        return available_models(status)
    if broker not in _said_silent:
        _said_silent.add(broker)
        log.warning("no model broker answers at %s, so it offers no models; start one with "
                    "`%s`", broker, start_broker(broker))
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
            if self.broker in _said_silent:
                raise KeyError(f"no model broker answers at {self.broker}, so it offers no "
                               f"model '{name}'; start one with `{start_broker(self.broker)}`")
            raise KeyError(f"the broker at {self.broker} offers no model '{name}'; it offers "
                           f"{closest_names(list(self._models), name) or 'none'}")
        return ServedModel(name, self.broker, self._models[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)
