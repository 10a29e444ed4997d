"""The ASE calculator that computes through a served model."""

from __future__ import annotations

import logging
from typing import Any

from ase.calculators.calculator import Calculator, all_changes

from mdp.client import Client
from mdp.errors import BrokerUnavailable, MDPError, WorkerError

from . import environment
from .broker_status import describe_wait, get_broker_status
from .changes import changes
from .errors import (
    PayloadError,
    RemoteCalculationError,
    RemoteError,
    RemotePropertyNotImplementedError,
    ServingError,
)
from .paths import chosen_broker, curve_options
from .payload import decode_reply, encode_request

log = logging.getLogger("mlipx_serve")

DEFAULT_TIMEOUT = 600.0  # a first request may wait for a worker to install and load a model
BROKER_TIMEOUT = 10.0  # but when no broker answers at all, that is known in seconds
RESENDS = 1  # times a request is sent again after the broker that held it was lost


def default_timeout() -> float:
    """``$MLIPX_SERVE_TIMEOUT`` or 600 s: a first request may wait for a worker to install
    and load its model."""
    return environment.seconds(environment.TIMEOUT, DEFAULT_TIMEOUT)


class RemoteCalculator(Calculator):
    """An ASE calculator whose model runs in a worker behind the broker.

    One round trip asks for everything the model computes cheaply (energy and forces,
    and stress for periodic cells), and ASE's caching then answers the other getters, so
    ``get_potential_energy()`` followed by ``get_forces()`` is one request. A broker that
    uses CURVE is reached with the key files given, or else those the environment names
    (``paths.curve_options``).

    Failures are ASE's exception types: ``RemoteCalculationError`` (a
    ``CalculationFailed``) when the model raised, ``RemotePropertyNotImplementedError``
    when it lacks a property, ``ServingError`` (a ``CalculationFailed`` too) when the bus
    could not deliver. A reply may take ``timeout`` seconds (default ``$MLIPX_SERVE_TIMEOUT``
    or 600: a first request may wait for a model to install and load), but no broker at
    all is an error after ``broker_timeout`` seconds, and a broker that stops answers at
    once. Use it as a context manager, or ``close()`` it, to free its socket.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies",
                              "stresses", "magmom", "magmoms", "charges", "dipole"]

    def __init__(self, model: str, broker: str | None = None, timeout: float | None = None,
                 *, broker_timeout: float = BROKER_TIMEOUT, curve_server_key: str | None = None,
                 curve_secret_key: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.broker = chosen_broker(broker)
        self.timeout = default_timeout() if timeout is None else timeout
        self.broker_timeout = broker_timeout
        self.curve = curve_options(curve_server_key, curve_secret_key)
        self._client: Client | None = None

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's change check, exact and cheap (``changes``): asked once per property."""
        return changes(self.atoms, atoms)

    def todict(self) -> dict[str, Any]:
        """What trajectories and logs record of this calculator."""
        return {"model": self.model, "broker": self.broker}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        wanted = {"energy", "forces", *properties}
        if self.atoms.pbc.any():
            wanted.add("stress")
        frames = encode_request(self.atoms, sorted(wanted))
        try:
            reply = self._request(frames)
        except WorkerError as error:
            raise remote_error(error, self.model) from None
        except MDPError as error:
            raise serving_error(error, self.model, self.broker) from error
        try:
            self.results = dict(decode_reply(reply))
        except RemoteError as error:  # an error reply of payload version 1
            error.model = self.model
            raise

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


def serving_error(error: MDPError, model: str, broker: str) -> ServingError:
    """The ASE-typed exception for what the bus said; raise it ``from`` that error."""
    if isinstance(error, BrokerUnavailable):
        return ServingError(f"model '{model}': no model broker answers at {broker}; start one "
                            f"with `mlipx serve-broker --autostart` ({error})")
    return ServingError(f"model '{model}' via {broker}: {error}")


def remote_error(error: WorkerError, model: str) -> Exception:
    """The ASE-typed exception for what the model's worker raised."""
    worker = getattr(error, "worker", None) or None
    if error.error_type == "PayloadError":
        return PayloadError(f"worker {worker or '?'} of model '{model}' refused the request: "
                            f"{error.message}")
    kind = RemotePropertyNotImplementedError if \
        error.error_type == "PropertyNotImplementedError" else RemoteCalculationError
    return kind(error.error_type, error.message, getattr(error, "traceback", "") or "",
                model=model, worker=worker)
