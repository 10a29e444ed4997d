"""Asking the model broker what it is doing, and saying it in words."""

from __future__ import annotations

import json
from typing import Any

from mdp.client import Client
from mdp.errors import MDPError

from .paths import curve_options, default_broker

PROBE_TIMEOUT = 2.0


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
        doing = status["autostart"].get("progress", {}).get(
            model, "installing and loading the model")
        return f"its worker has been starting for {starting[model]:.0f} s ({doing})"
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
