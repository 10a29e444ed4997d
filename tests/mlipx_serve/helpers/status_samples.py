"""Broker statuses as ``get_broker_status`` gives them, built from a few parts, for the
tests of what clients and ``serve-status`` make of them."""

from __future__ import annotations

SERVICE = {"workers": 2, "idle": 0, "busy": 2, "queued": 3, "served": 7, "failed": 1,
           "expired": 0, "rejected": 0}


def running(services: dict, autostart: dict | None = None, workers: list | None = None) -> dict:
    return {"running": True, "broker": "ipc:///x/broker.ipc",
            "status": {"version": "0.1.0", "uptime": 3725.0, "counters": {},
                       "services": services, "workers": workers or []},
            "autostart": autostart or {"autostart": False, "models": {}}}


def connection(id: str, state: str, process: str | None = None, served: int = 0,
               since: float = 5.0, service: str = "emt", **metadata) -> dict:
    """A worker as mmi.status lists it; ``process`` as a worker of ours says it in READY."""
    if process is not None:
        metadata["process"] = process
    return {"id": id, "service": service, "dialect": "MDP/0.2", "state": state,
            "served": served, "since": since, "metadata": metadata}


BUSY_TWO = [connection("a:1:1", "busy"), connection("b:2:1", "busy")]
