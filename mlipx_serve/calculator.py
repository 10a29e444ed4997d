"""The ASE calculator that computes through a served model, and the ways to get one."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ase.calculators.calculator import Calculator, all_changes

from mdp.client import Client
from mdp.errors import MDPError

from .paths import curve_options, default_broker
from .payload import RemoteCalculationError, decode_reply, encode_request

log = logging.getLogger("mlipx_serve")

TIMEOUT_ENV = "MLIPX_SERVE_TIMEOUT"
DEFAULT_TIMEOUT = 600.0  # a first request may wait for a worker to install and load a model
PROBE_TIMEOUT = 2.0


def default_timeout() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))


class RemoteCalculator(Calculator):
    """An ASE calculator whose model runs in a worker behind the broker.

    One round trip asks for everything the model computes cheaply (energy and forces,
    and stress for periodic cells), and ASE's caching then answers the other getters, so
    ``get_potential_energy()`` followed by ``get_forces()`` is one request. A broker that
    uses CURVE is reached with the key files given, or else those the environment names
    (``paths.curve_options``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies",
                              "stresses", "magmom", "magmoms", "charges", "dipole"]

    def __init__(self, model: str, broker: str | None = None, timeout: float | None = None,
                 *, curve_server_key: str | None = None, curve_secret_key: str | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.broker = broker or default_broker()
        self.timeout = default_timeout() if timeout is None else timeout
        self.curve = curve_options(curve_server_key, curve_secret_key)
        self._client: Client | None = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        wanted = {"energy", "forces", *properties}
        if self.atoms.pbc.any():
            wanted.add("stress")
        frames = encode_request(self.atoms, sorted(wanted))
        reply = self._request(frames)
        try:
            self.results = dict(decode_reply(reply))
        except RemoteCalculationError as error:
            error.model = self.model
            raise

    def _request(self, frames: list) -> list:
        if self._client is None:
            self._client = Client(self.broker, timeout=self.timeout, retries=1, copy=False,
                                  **self.curve)
        return self._client.request(self.model, *frames, waiting=self._still_waiting)

    def _still_waiting(self, seconds: float) -> None:
        log.warning("still waiting for model '%s' after %.0f s: %s", self.model, seconds,
                    describe_wait(get_broker_status(self.broker, **self.curve), self.model))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ------------------------------------------------------------ asking the broker


def _mmi_json(broker: str, service: str, timeout: float, curve: dict) -> Any:
    with Client(broker, timeout=timeout, retries=0, **curve) as client:
        reply = client.request(service)
    text = bytes(reply[0]) if reply else b""
    return json.loads(text) if text and text[:1] in b"{[" else None


def get_broker_status(broker: str | None = None, timeout: float = PROBE_TIMEOUT, *,
                      curve_server_key: str | None = None,
                      curve_secret_key: str | None = None) -> dict:
    """The broker's state as plain data; ``running`` is False when no broker answers.

    A CURVE broker the keys do not fit never answers, so it looks like no broker at all.
    """
    broker = broker or default_broker()
    curve = curve_options(curve_server_key, curve_secret_key)
    try:
        status = _mmi_json(broker, "mmi.status", timeout, curve)
    except MDPError as error:
        return {"running": False, "broker": broker, "error": str(error)}
    try:
        serving = _mmi_json(broker, "mmi.mlipx", timeout, curve)
    except MDPError:
        serving = None
    return {"running": True, "broker": broker, "status": status,
            "autostart": serving if isinstance(serving, dict) else {"autostart": False,
                                                                    "models": {}}}


def describe_wait(status: dict, model: str) -> str:
    """Why a request for ``model`` may be waiting, as the broker sees it."""
    if not status["running"]:
        return f"no broker answers at {status['broker']} (it may be restarting)"
    starting = status["autostart"].get("starting", {})
    if model in starting:
        return (f"its worker has been starting for {starting[model]:.0f} s (installing "
                f"and loading the model)")
    service = status["status"]["services"].get(model)
    if not service or not service["workers"]:
        return "no worker serves it; start one with `mlipx serve " + model + "`"
    return (f"{service['busy']} of {service['workers']} worker(s) busy, "
            f"{service['queued']} request(s) queued")


def available_models(status: dict) -> dict[str, dict]:
    """Model name -> what the broker knows of it (workers now, whether it can start one)."""
    if not status.get("running"):
        return {}
    services = status["status"]["services"]
    startable = status["autostart"].get("models", {})
    names = {name for name, s in services.items() if s["workers"]} | set(startable)
    return {name: {**services.get(name, {"workers": 0, "idle": 0, "busy": 0, "queued": 0}),
                   "autostart": name in startable,
                   "extras": startable.get(name, {}).get("extras", [])}
            for name in sorted(names)}


def served_calculator_or_none(name: str | None, broker: str | None = None,
                              **kwargs: Any) -> RemoteCalculator | None:
    """A calculator for the served model ``name``, or None (with the reason logged)."""
    broker = broker or default_broker()
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

    def __repr__(self) -> str:
        return f"ServedModel({self.name!r}, broker={self.broker!r})"


class Models(Mapping):
    """The models the broker offers: those with workers, and those it can start."""

    def __init__(self, broker: str | None = None):
        self.broker = broker or default_broker()
        self.refresh()

    def refresh(self) -> None:
        self._models = available_models(get_broker_status(self.broker))

    def __getitem__(self, name: str) -> ServedModel:
        if name not in self._models:
            known = ", ".join(self._models) or "none"
            raise KeyError(f"the broker at {self.broker} offers no model '{name}' "
                           f"(offered: {known})")
        return ServedModel(name, self.broker, self._models[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)
