"""What the model broker adds to the bus's Prometheus metrics (``mdp.metrics``): the same
in the units people think in, structures, and the worker processes and their starts, per
model. Each model is its service name (a client-defined one ``NAME@fingerprint``), never
anything of its definition's kwargs, so no label grows without bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mdp.metrics import Snapshot
from mlipx_serve.client.broker_status import worker_processes

# the kinds of worker events counted per model (``WorkerEvents``)
STARTED, START_FAILED, EXITED, RETIRED = "started", "start_failed", "exited", "retired"


class WorkerEvents:
    """How often autostart started, failed to start, saw leave and retired each model's
    worker processes: counts only ever go up, as Prometheus' counters do."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def count(self, model: str, kind: str) -> None:
        self.counts[model, kind] += 1

    def families(self, snapshot: Snapshot) -> Iterator[Any]:
        text = {STARTED: "Worker processes autostart started",
                START_FAILED: "Worker starts that failed (never registered)",
                EXITED: "Worker processes that left (idle, ended, or died)",
                RETIRED: "Idle worker processes retired to make room under the limit"}
        for kind, help_text in text.items():
            family = CounterMetricFamily(f"mlipx_worker_{kind}", help_text, labels=["model"])
            for (model, counted), value in sorted(self.counts.items()):
                if counted == kind:
                    family.add_metric([model], value)
            yield family


def model_families(snapshot: Snapshot) -> Iterator[Any]:
    """Structures served and failed, queued and in flight, and worker processes by state,
    per model."""
    services = snapshot.status["services"]
    structures = CounterMetricFamily("mlipx_structures", "Structures served and failed "
                                     "(a chunk counts its structures)",
                                     labels=["model", "outcome"])
    queued = GaugeMetricFamily("mlipx_queued_structures", "Structures waiting for a worker",
                               labels=["model"])
    in_flight = GaugeMetricFamily("mlipx_in_flight_structures", "Structures that workers "
                                  "compute now", labels=["model"])
    for model, service in services.items():
        if model.startswith("mmi."):
            continue
        structures.add_metric([model, "served"], service["units"]["served"])
        structures.add_metric([model, "failed"], service["units"]["failed"])
        queued.add_metric([model], service["units"]["queued"])
        in_flight.add_metric([model], service["units"]["in_flight"])
    yield from (structures, queued, in_flight, _processes(snapshot.status["workers"]))


def _processes(workers: list[dict]) -> Any:
    """Worker processes by state: busy while any of its connections holds a request."""
    family = GaugeMetricFamily("mlipx_worker_processes", "Worker processes, by state",
                               labels=["model", "state"])
    counts: Counter[tuple[str, str]] = Counter()
    for model, _, connections in worker_processes(workers):
        busy = any(connection["state"] == "busy" for connection in connections)
        counts[model, "busy" if busy else "idle"] += 1
    for model in sorted({model for model, _ in counts}):
        for state in ("idle", "busy"):
            family.add_metric([model, state], counts[model, state])
    return family
