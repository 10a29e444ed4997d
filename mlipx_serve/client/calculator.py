"""The ASE calculator that computes through a served model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, Parameters, all_changes

from mdp.client import Client
from mdp.errors import MDPError, ServiceUnknown, WorkerError
from mlipx_serve import environment
from mlipx_serve.client.broker_status import describe_wait, get_broker_status, recent_status
from mlipx_serve.client.failures import FALLS_BACK, served_error
from mlipx_serve.client.keys import curve_options
from mlipx_serve.client.routing import service_for
from mlipx_serve.errors import NotServed, RemoteError
from mlipx_serve.models.changes import changes
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.endpoints import chosen_broker
from mlipx_serve.wire.payload import Computed, encode_request, read_reply

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0  # a first request may wait for a worker to install and load a model
BROKER_TIMEOUT = 10.0  # but when no broker answers at all, that is known in seconds
RESENDS = 1  # times a request is sent again after the broker that held it was lost


def owned(value: Any) -> Any:
    """A result as the model's own calculator gives it: arrays writable (a reply's are
    read-only views of its frames), a float a numpy float."""
    if isinstance(value, np.ndarray):
        return value.copy()
    return np.float64(value) if type(value) is float else value


def default_timeout() -> float:
    """``$MLIPX_SERVE_TIMEOUT`` or 600 s: a first request may wait for a worker to install
    and load its model."""
    return environment.seconds(environment.TIMEOUT, DEFAULT_TIMEOUT)


class RemoteCalculator(Calculator):
    """An ASE calculator whose model runs in a worker behind the broker.

    One round trip asks for what the caller wants and, as a convenience, what the model
    computes cheaply beside it (energy and forces, and stress for cells periodic in all
    three directions where the model has stress), and ASE's caching then answers the
    other getters, so ``get_potential_energy()`` followed by ``get_forces()`` is one
    request; a convenience the model cannot give fails nothing. From its first reply on
    it is the model's own in what it says of itself: ``name``, ``implemented_properties``
    and ``parameters`` (``todict()``), as ``ase.db`` and trajectories record them. A
    broker that uses CURVE is reached with the key files given, or else those the
    environment names (``client.keys.curve_options``).

    ``model`` is the service's name. With ``definition`` (a model's ``definition()``) every
    request names that model, and a worker that serves another refuses it
    (``DefinitionMismatch``) rather than compute it; without, the service's model is
    taken as it is. ``fallback`` builds a local calculator that this one computes with
    from then on, with a warning, should the model's worker fail to start or serve another
    model (``get_calculator(use_serve=True)`` gives one; a RemoteCalculator made by hand
    raises instead).

    Failures are ASE's exception types: ``RemoteCalculationError`` (a
    ``CalculationFailed``) when the model raised, ``RemotePropertyNotImplementedError``
    when it lacks a property, ``ServingError`` (a ``CalculationFailed`` too) when the bus
    could not deliver. A reply may take ``timeout`` seconds (default ``$MLIPX_SERVE_TIMEOUT``
    or 600: a first request may wait for a model to install and load), but no broker at
    all is an error after ``broker_timeout`` seconds, and a broker that stops answers at
    once. Use it as a context manager, or ``close()`` it, to free its socket.
    """

    # until the model says what it implements (its first reply), whatever a model may
    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies",
                              "stresses", "magmom", "magmoms", "charges", "dipole"]
    CONVENIENT = ("energy", "forces")  # asked for beside any property (stress: periodic)

    def __init__(self, model: str, broker: str | None = None, timeout: float | None = None,
                 *, definition: Definition | None = None,
                 fallback: Callable[[], Calculator] | None = None,
                 broker_timeout: float = BROKER_TIMEOUT, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.definition = definition
        self.broker = chosen_broker(broker)
        self.timeout = default_timeout() if timeout is None else timeout
        self.broker_timeout = broker_timeout
        self.curve = curve_options(curve_server_key, curve_secret_key)
        self._fallback = fallback
        self._local: Calculator | None = None  # what it computes with once it fell back
        self._client: Client | None = None
        self._described = False  # the model said what it is

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's change check, exact and cheap (``changes``): asked once per property."""
        return changes(self.atoms, atoms)

    def todict(self) -> dict[str, Any]:
        """What trajectories and logs record of this calculator: what the model's own
        calculator's ``todict`` gives (once the model has said it)."""
        return dict(getattr(self, "_model_todict", {}))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self._local is not None:
            self._compute_locally(properties)
            return
        convenient = {*self.CONVENIENT, *(["stress"] if self.atoms.pbc.all() else [])}
        optional = sorted(convenient.intersection(self.implemented_properties) - {*properties})
        frames = encode_request(self.atoms, list(properties), self.definition,
                                optional=optional, describe=not self._described)
        try:
            computed = self._computed(frames)
        except (WorkerError, MDPError, RemoteError, NotServed) as error:
            failure = served_error(error, self.model, self.broker)
            if self._fallback is None or not isinstance(failure, FALLS_BACK):
                raise failure from failure.__cause__
            self._fall_back(failure)
            self._compute_locally(properties)
            return
        self.results = {name: owned(value) for name, value in computed.results.items()}
        if computed.model is not None:
            self._learn(computed.model)

    def _computed(self, frames: list) -> Computed:
        try:
            return read_reply(self._request(frames))
        except ServiceUnknown:
            if self.definition is None:
                raise
        # A broker that restarted forgot the model this client defined: define it again.
        status = recent_status(self.broker, ask=True)
        self.model = service_for(self.definition, status, self.curve)
        return read_reply(self._request(frames))

    def _learn(self, model: dict[str, Any]) -> None:
        """The model's name, properties and parameters, in place of the defaults."""
        self._model_name, self._model_todict = model["name"], model["todict"]
        self.implemented_properties = list(model["implemented_properties"])
        self.parameters = Parameters(model["parameters"])
        self._described = True

    def _get_name(self) -> str:
        """The model's calculator's name (``name``), once the model has said it."""
        return getattr(self, "_model_name", None) or super()._get_name()

    def _fall_back(self, failure: Exception) -> None:
        log.warning("model '%s' is computed locally from now on: %s", self.model, failure)
        self._local, self._fallback = self._fallback(), None
        self.close()

    def _compute_locally(self, properties) -> None:
        for name in properties:
            self._local.get_property(name, self.atoms)
        self.results = dict(self._local.results)

    def _request(self, frames: list) -> list:
        if self._client is None:
            self._client = Client(self.broker, timeout=self.timeout, retries=RESENDS, copy=False,
                                  broker_timeout=self.broker_timeout, **self.curve)
        return self._client.request(self.model, *frames, waiting=self._still_waiting)

    def _still_waiting(self, seconds: float) -> None:
        log.warning("still waiting for model '%s' after %.0f s: %s", self.model, seconds,
                    describe_wait(get_broker_status(self.broker, **self.curve), self.model))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RemoteCalculator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
