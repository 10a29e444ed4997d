"""On a broker that starts no workers, a name no worker serves and no model of the catalogue
has (a typo, say) is answered within seconds, with the models it serves and the closest
names, rather than left to wait its whole expiry for a worker that is not coming. The
grace lets a worker started by hand at the same moment register first."""

from __future__ import annotations

from collections.abc import Iterable

from mdp.broker import Broker
from mdp.core import Event, EventKind
from mdp.errors import ServiceUnknown
from mlipx_serve.client.broker_status import closest_names

GRACE = 5.0  # seconds a request for an unknown name waits for a worker to register


class UnknownNames:
    def __init__(self, broker: Broker, catalogue: Iterable[str], worker_endpoint: str):
        self.broker = broker
        self.catalogue = set(catalogue)  # names that wait: someone may start their worker
        self.worker_endpoint = worker_endpoint
        self._checking: set[str] = set()
        broker.add_hook(self.on_event)

    def on_event(self, event: Event) -> None:
        name = event.service
        if event.kind == EventKind.DEMAND and not event.workers and \
                name not in self.catalogue and name not in self._checking:
            self._checking.add(name)
            self.broker.call_later(GRACE, lambda: self._check(name))

    def _check(self, name: str) -> None:
        self._checking.discard(name)
        if self.broker.service_workers(name):
            return
        served = [service for service in self.broker.core.services
                  if self.broker.service_workers(service)]
        names = [service.decode("utf-8", "replace") for service in served]
        self.broker.fail_queued(name, ServiceUnknown(
            f"no worker serves '{name}', and this broker, which starts no workers, knows no "
            f"model of that name; it serves {closest_names(names, name) or 'no model yet'}. "
            f"Start a worker for it with `mlipx serve {name} --models FILE --broker "
            f"{self.worker_endpoint}`, or restart the broker with --autostart", name))
