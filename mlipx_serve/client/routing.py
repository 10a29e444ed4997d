"""Which service computes a model definition, exactly: the client's half of model identity.

A service serves a definition when every worker the broker has for it, and the one it
would start for it, report that definition's fingerprint (protocol/model-definition.md).
The definition's own name comes first, then its own service (``name@fingerprint``), then
any other that serves it (an unnamed EMT is the built-in ``emt``). When none does, an
autostarting broker is sent the definition (``mmi.mlipx.define``) and starts its workers
from it; a broker that cannot, or will not, is a ``NotServed`` that says why and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mdp.client import ask
from mdp.errors import MDPError
from mlipx_serve.client.broker_status import (
    available_models,
    describe_offer,
    recent_status,
    serving,
)
from mlipx_serve.client.keys import curve_options
from mlipx_serve.errors import DefinitionError, NotServed
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.endpoints import start_broker
from mlipx_serve.wire.status import DEFINE_SERVICE

DEFINE_TIMEOUT = 10.0


def route(model: Any, broker: str, call_kwargs: Mapping[str, Any] | None = None
          ) -> tuple[str, Definition | None]:
    """The service for ``model`` at ``broker``, and the definition its requests carry.

    ``model`` is a definition (``GenericASECalculator`` and the like: exactly that model,
    called with ``call_kwargs``), or a name (whatever the broker serves under it, and no
    definition to check)."""
    try:
        definition = None if isinstance(model, str) else model.definition(**(call_kwargs or {}))
    except DefinitionError as error:
        raise NotServed(f"no worker can rebuild it: {error}") from None
    curve = curve_options()
    status = recent_status(broker)
    if not status["running"]:
        raise NotServed(f"no model broker answers at {broker}; start one with "
                        f"`{start_broker(broker)}`")
    if definition is not None:
        return service_for(definition, status, curve), definition
    if model not in available_models(status):
        raise NotServed(f"the broker at {broker} has no worker for it and cannot start one; "
                        f"{describe_offer(status, model)}")
    return model, None


def service_for(definition: Definition, status: dict, curve: dict) -> str:
    """The service to send requests for ``definition`` to, given the broker's status."""
    found = served_as(definition, status)
    if found is not None:
        return found
    if not serving(status).autostart:
        raise NotServed(f"the broker at {status['broker']} has no worker for this definition "
                        f"and starts none (it runs without --autostart); restart it with "
                        f"`{start_broker(status['broker'])}`")
    return define(definition, status["broker"], curve)


def served_as(definition: Definition, status: dict) -> str | None:
    """The service that computes exactly ``definition``, if the broker has one."""
    offered = fingerprints(status)
    for name in definition.services_to_try(offered):
        if offered.get(name) == {definition.fingerprint}:
            return name
    return None


def fingerprints(status: dict) -> dict[str, set[str | None]]:
    """Service -> the fingerprints of its workers and of the model the broker would start
    for it (None for one without a definition)."""
    found: dict[str, set[str | None]] = {}
    for name, offer in serving(status).models.items():
        found.setdefault(name, set()).add(offer.fingerprint)
    for worker in status["status"]["workers"]:
        metadata = worker.get("metadata") or {}
        found.setdefault(worker["service"], set()).add(metadata.get("fingerprint"))
    return found


def define(definition: Definition, broker: str, curve: dict) -> str:
    """Ask an autostarting broker to serve ``definition``; the service it gives it."""
    try:
        reply = ask(broker, DEFINE_SERVICE, json.dumps(definition.to_json()),
                    timeout=DEFINE_TIMEOUT, **curve)
    except MDPError as error:
        raise NotServed(f"the broker at {broker} did not take the definition: {error}") from None
    code, text = _texts(reply)
    if code == "200" and text:
        return text
    if code == "501":  # a broker of an older mlipx-serve
        raise NotServed(f"the broker at {broker} cannot start workers from a definition; "
                        f"restart it with this version's `mlipx serve-broker --autostart`")
    raise NotServed(text or f"the broker at {broker} answered {code}")


def _texts(reply: list[bytes]) -> tuple[str, str]:
    texts = [frame.decode("utf-8", "replace") for frame in reply[:2]]
    return (texts + ["", ""])[0], (texts + ["", ""])[1]
