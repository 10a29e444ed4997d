"""The broker's numbers for Prometheus, over HTTP (``mdp broker --metrics HOST:PORT``).

prometheus_client serves the text exposition format from a thread of its own; each scrape
asks the broker's loop for a snapshot of its status (``call_soon``, so the core is only
ever read in its own thread) and turns it into metric families. Nothing is counted twice
and nothing costs a request anything: the counters are the core's own, and its queue
waits and work times (``mdp.timings``) are kept only once metrics are on. A layer above
adds families of its own with ``extra`` (the model server: structures, worker processes,
worker starts).

Names follow Prometheus' conventions: base units, counters end in ``_total``, one label
per thing counted (``service``, ``worker``), never a value without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from .broker import Broker
from .timings import BOUNDS, Histogram

SNAPSHOT_TIMEOUT = 5.0  # seconds a scrape waits for the broker's loop
DEFAULT_HOST = "127.0.0.1"  # where only a port is given: this machine alone
OUTCOMES = ("served", "worker_error", "lost", "not_served", "expired", "rejected",
            "abandoned")


@dataclass
class Snapshot:
    """The broker's status (``BrokerCore.status``) and each service's histograms."""

    status: dict
    timings: dict[str, tuple[Histogram, Histogram]]  # service -> (queue wait, work time)


Extra = Callable[[Snapshot], Iterable[Any]]  # more metric families from a snapshot


def serve_metrics(broker: Broker, address: str, extra: Iterable[Extra] = ()):
    """Serve ``broker``'s metrics at ``address`` (``HOST:PORT``, or a port alone for
    127.0.0.1); returns prometheus_client's (server, thread). Turns the broker's timings
    on."""
    host, port = metrics_address(address)
    broker.call_soon(broker.core.enable_timings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, list(extra)))
    return start_http_server(port, addr=host, registry=registry)


def metrics_address(address: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` or ``PORT``; a ``ValueError`` that says why not."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics takes PORT or HOST:PORT (e.g. 9464 or 0.0.0.0:9464), "
                         f"not {address!r}")
    return host, int(port)


class BrokerCollector(Collector):
    def __init__(self, broker: Broker, extra: list[Extra]):
        self.broker = broker
        self.extra = extra

    def collect(self) -> Iterator[Any]:
        snapshot = take_snapshot(self.broker)
        yield from broker_families(snapshot)
        for more in self.extra:
            yield from more(snapshot)


def take_snapshot(broker: Broker, timeout: float = SNAPSHOT_TIMEOUT) -> Snapshot:
    """The broker's status as its loop sees it; ``TimeoutError`` if the loop is stuck."""
    taken: list[Snapshot] = []
    done = threading.Event()

    def snap() -> None:
        core = broker.core
        timings = {name.decode("utf-8", "replace"): (state.timings.wait.copy(),
                                                     state.timings.work.copy())
                   for name, state in core.services.items() if state.timings is not None}
        taken.append(Snapshot(core.status(time.monotonic()), timings))
        done.set()

    broker.call_soon(snap)
    if not done.wait(timeout):
        raise TimeoutError(f"the broker's loop did not answer within {timeout:g} s")
    return taken[0]


def broker_families(snapshot: Snapshot) -> Iterator[Any]:
    status = snapshot.status
    yield GaugeMetricFamily("mdp_broker_uptime_seconds", "Seconds since the broker started",
                            value=status["uptime"])
    messages = CounterMetricFamily("mdp_broker_messages", "Messages the broker handled, by "
                                   "kind: client requests, worker replies relayed, malformed "
                                   "ones dropped", labels=["kind"])
    for kind, key in (("request", "requests"), ("reply", "replies"),
                      ("dropped", "dropped_messages")):
        messages.add_metric([kind], status["counters"][key])
    yield messages
    yield from _service_families(status["services"])
    yield from _histograms(snapshot.timings)
    yield _worker_requests(status["workers"])


def _service_families(services: dict) -> Iterator[Any]:
    requests = CounterMetricFamily(
        "mdp_requests", "Requests for a service by how they ended: served, worker_error (the "
        "handler raised), lost (its workers died), not_served (no worker could start), "
        "expired (waited too long), rejected (queue full), abandoned (its client left)",
        labels=["service", "outcome"])
    units = CounterMetricFamily("mdp_units", "Units of work (a layer above says what: "
                                "structures for models) served and failed",
                                labels=["service", "outcome"])
    gauges = {name: GaugeMetricFamily(f"mdp_{name}", text, labels=["service"]) for name, text
              in (("queued_requests", "Requests waiting for a worker"),
                  ("in_flight_requests", "Requests that workers hold"),
                  ("waiting_clients", "Clients with requests queued or held"))}
    workers = GaugeMetricFamily("mdp_workers", "Worker connections registered, by state",
                                labels=["service", "state"])
    for name, service in services.items():
        counts = dict(service,
                      worker_error=service["failed"] - service["lost"] - service["not_served"])
        for outcome in OUTCOMES:
            requests.add_metric([name, outcome], counts[outcome])
        for outcome in ("served", "failed"):
            units.add_metric([name, outcome], service["units"][outcome])
        gauges["queued_requests"].add_metric([name], service["queued"])
        gauges["in_flight_requests"].add_metric([name], service["busy"])
        gauges["waiting_clients"].add_metric([name], service["clients_active"])
        workers.add_metric([name, "idle"], service["idle"])
        workers.add_metric([name, "busy"], service["busy"])
    yield from (requests, units, *gauges.values(), workers)


def _histograms(timings: dict[str, tuple[Histogram, Histogram]]) -> Iterator[Any]:
    waits = HistogramMetricFamily("mdp_queue_wait_seconds", "Seconds a request waited in "
                                  "its service's queue before a worker took it",
                                  labels=["service"])
    works = HistogramMetricFamily("mdp_work_seconds", "Seconds a worker took for a request: "
                                  "its own time where its reply says (as the layer above "
                                  "reads it), else from handing it out to its last reply",
                                  labels=["service"])
    for name, (wait, work) in timings.items():
        waits.add_metric([name], _buckets(wait), sum_value=wait.total)
        works.add_metric([name], _buckets(work), sum_value=work.total)
    yield waits
    yield works


def _buckets(histogram: Histogram) -> list[tuple[str, int]]:
    """Prometheus' cumulative buckets, ``+Inf`` last."""
    found, running = [], 0
    for bound, count in zip((*map(str, BOUNDS), "+Inf"), histogram.counts, strict=True):
        running += count
        found.append((bound, running))
    return found


def _worker_requests(workers: list[dict]) -> Any:
    family = CounterMetricFamily("mdp_worker_requests", "Requests a worker connection "
                                 "answered since it registered, by outcome",
                                 labels=["service", "worker", "outcome"])
    for worker in workers:
        family.add_metric([worker["service"], worker["id"], "served"], worker["served"])
        family.add_metric([worker["service"], worker["id"], "failed"], worker["failed"])
    return family
