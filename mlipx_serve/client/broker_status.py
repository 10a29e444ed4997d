"""Asking the model broker what it is doing, and saying it in words."""

from __future__ import annotations

import difflib
import json
import time
from typing import Any

from mdp.client import ask
from mdp.errors import MDPError
from mlipx_serve.client.keys import curve_options
from mlipx_serve.errors import MlipxServeError
from mlipx_serve.wire.endpoints import chosen_broker, default_broker
from mlipx_serve.wire.status import STATUS_SERVICE, ServingStatus

PROBE_TIMEOUT = 2.0
OFFER_SHOWN = 12  # model names listed when a name is not among them


def _mmi_json(broker: str, service: str, timeout: float, curve: dict) -> Any:
    reply = ask(broker, service, timeout=timeout, **curve)
    text = reply[0] if reply else b""
    return json.loads(text) if text and text[:1] in b"{[" else None


def get_broker_status(broker: str | None = None, timeout: float = PROBE_TIMEOUT, *,
                      curve_server_key: str | None = None,
                      curve_secret_key: str | None = None) -> dict:
    """The broker's state as plain data; ``running`` is False when no broker answers;
    ``at``: when it was taken (Unix time; the workers report when they started).

    A CURVE broker the keys do not fit never answers, so it looks like no broker at all.
    """
    broker = chosen_broker(broker)
    curve = curve_options(curve_server_key, curve_secret_key)
    try:
        status = _mmi_json(broker, "mmi.status", timeout, curve)
    except MDPError as error:
        return {"running": False, "broker": broker, "error": str(error)}
    try:
        serving = _mmi_json(broker, STATUS_SERVICE, timeout, curve)
    except MDPError:
        serving = None
    return {"running": True, "broker": broker, "at": time.time(), "status": status,
            "autostart": serving if isinstance(serving, dict) else {"autostart": False,
                                                                    "models": {}}}


NO_BROKER_MEMORY = 30.0  # seconds a broker that did not answer is taken to be absent
_silent_since: dict[str, float] = {}  # endpoint -> when its broker last did not answer


def recent_status(broker: str, ask: bool = False) -> dict:
    """``get_broker_status``, but a broker that did not answer within the last
    ``NO_BROKER_MEMORY`` seconds is not asked again unless ``ask``: each question to no
    broker costs ``PROBE_TIMEOUT``, and a script may ask for every model it builds."""
    silent_since = _silent_since.get(broker)
    if not ask and silent_since is not None and \
            time.monotonic() - silent_since < NO_BROKER_MEMORY:
        return {"running": False, "broker": broker,
                "error": f"it did not answer {time.monotonic() - silent_since:.0f} s ago"}
    status = get_broker_status(broker)
    if status["running"]:
        _silent_since.pop(broker, None)
    else:
        _silent_since[broker] = time.monotonic()
    return status


def describe_wait(status: dict, model: str) -> str:
    """Why a request for ``model`` may be waiting, as the broker sees it."""
    if not status["running"]:
        return f"no broker answers at {status['broker']} (it may be restarting)"
    started = serving(status)
    if model in started.starting:
        doing = started.progress.get(model, "installing and loading the model")
        return f"its worker has been starting for {started.starting[model]:.0f} s ({doing})"
    info = available_models(status).get(model)
    if not info or not info["workers"]:
        return f"no worker serves it; {how_to_serve(status, model)}"
    return (f"{info['busy']} of {info['workers']} worker(s) busy, "
            f"{info['queued']} request(s) queued")


def describe_offer(status: dict, wanted: str) -> str:
    """What the broker offers instead of ``wanted`` (closest names first), and how to
    serve ``wanted`` there."""
    listing = closest_names(list(available_models(status)), wanted)
    return f"it offers {listing or 'no model yet'}; {how_to_serve(status, wanted)}"


def closest_names(names: list[str], wanted: str) -> str:
    """Up to ``OFFER_SHOWN`` of ``names``, the closest to ``wanted`` first, for a message."""
    offered = closest_first(names, wanted)
    return ", ".join(offered[:OFFER_SHOWN]) + (", ..." if len(offered) > OFFER_SHOWN else "")


def closest_first(names: list[str], wanted: str) -> list[str]:
    return difflib.get_close_matches(wanted, names, n=len(names), cutoff=0.0)


def how_to_serve(status: dict, model: str) -> str:
    """The command that starts a worker for ``model`` beside this broker."""
    command = f"mlipx serve {model}"
    if status["broker"] != _default_broker():
        command += f" --broker {status['broker']}"
    if _known_model(model):
        return f"start a worker with `{command}`"
    return (f"start a worker with `{command} --models FILE`, FILE a models.py whose "
            f"ALL_MODELS defines it")


def _default_broker() -> str | None:
    try:
        return default_broker()
    except (MlipxServeError, OSError):
        return None


def _known_model(name: str) -> bool:
    """Would ``mlipx serve NAME`` find it (built in, or in ``$MLIPX_SERVE_MODELS``)?"""
    from mlipx_serve.models.models_file import load_registry

    try:
        return name in load_registry()
    except MlipxServeError:
        return False


def available_models(status: dict) -> dict[str, dict]:
    """Model name -> what the broker knows of it: its queue and counters, its workers
    now (processes, idle or busy: ``worker_processes``), whether it can start one."""
    if not status.get("running"):
        return {}
    services = status["status"]["services"]
    startable = serving(status).models
    names = {name for name, s in services.items() if s["workers"]} | set(startable)
    processes = worker_processes(status["status"]["workers"])
    return {name: {**services.get(name, {"queued": 0}),
                   **_process_counts([c for m, _, c in processes if m == name]),
                   "autostart": name in startable,
                   "extras": startable[name].extras if name in startable else []}
            for name in sorted(names)}


def serving(status: dict) -> ServingStatus:
    """What the broker of ``status`` says of its serving (``mmi.mlipx``), typed."""
    return ServingStatus.from_json(status.get("autostart"))


def worker_processes(workers: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(model, process, its connections) for each worker process, in the broker's order:
    the connections whose READY metadata names the same ``process`` (a batching or
    prefetching worker holds several), else a connection alone, named by its id."""
    found: dict[tuple[str, str], list[dict]] = {}
    for worker in workers:
        process = (worker.get("metadata") or {}).get("process")
        name = process if isinstance(process, str) else worker["id"]
        found.setdefault((worker["service"], name), []).append(worker)
    return [(model, name, connections) for (model, name), connections in found.items()]


def _process_counts(processes: list[list[dict]]) -> dict[str, int]:
    """A process is busy while any of its connections is."""
    busy = sum(any(c["state"] == "busy" for c in connections) for connections in processes)
    return {"workers": len(processes), "idle": len(processes) - busy, "busy": busy}
