"""Autostart's start policy: one start at a time up to the limit, the cores shared out;
and the models clients defined, kept up to a limit, the least recently used forgotten."""

from __future__ import annotations

import json

import pytest

from mdp.core import Event
from mlipx_serve import GenericASECalculator
from mlipx_serve.broker import autostart
from mlipx_serve.broker.autostart import wants_worker
from mlipx_serve.broker.local_launcher import thread_share
from mlipx_serve.wire.status import DEFINE_SERVICE
from mlipx_serve.wire.worker_options import WorkerOptions


def demand(workers: int, busy: int, queued: int, processes: int | None = None) -> Event:
    """Each worker connection a process of its own, unless ``processes`` says otherwise."""
    return Event("demand", "m", queued=queued, workers=workers, busy=busy,
                 processes=workers if processes is None else processes)


@pytest.mark.parametrize("event, starting, limit, expected", [
    (demand(0, 0, 1), False, 1, True),  # nobody serves it: start one
    (demand(0, 0, 1), True, 1, False),  # one start at a time
    (demand(1, 1, 1), False, 1, False),  # at the limit
    (demand(1, 1, 1), False, 2, True),  # all busy and a request waits: one more
    (demand(2, 1, 1), False, 3, False),  # an idle worker will take it
    (demand(2, 2, 3), False, 3, True),
    (demand(16, 16, 5, processes=1), False, 2, True),  # one batching process, 16 connections
    (demand(32, 32, 5, processes=2), False, 2, False),  # two batching processes: the limit
    # a reply, or a worker that came, with requests still queued: one more
    (Event("served", "m", queued=5, workers=1, busy=1, processes=1), False, 4, True),
    (Event("worker-ready", "m", queued=8, workers=1, busy=0, processes=1), False, 2, True),
])
def test_autostart_starts_one_worker_at_a_time_up_to_the_limit(event, starting, limit,
                                                               expected):
    assert wants_worker(event, starting, limit) is expected


def test_workers_started_together_share_the_cores_out():
    assert thread_share(1, cores=16) is None  # one worker may have them all
    assert thread_share(4, cores=16) == 4
    assert thread_share(3, cores=2) == 1



class FakeBroker:
    """What an Autostarter asks of its broker: the workers each service has."""

    def __init__(self):
        self.workers: dict[str, int] = {}
        self.handlers: dict = {}

    def add_hook(self, hook) -> None:
        self.hook = hook

    def add_mmi_handler(self, service: str, handler) -> None:
        self.handlers[service] = handler

    def service_workers(self, name: str) -> int:
        return self.workers.get(name, 0)


def lj_definition(sigma: float) -> bytes:
    definition = GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                      kwargs={"sigma": sigma}).definition()
    return json.dumps(definition.to_json()).encode()


def test_the_least_recently_used_client_definition_without_workers_makes_room(monkeypatch):
    monkeypatch.setattr(autostart, "MAX_CLIENT_DEFINITIONS", 2)
    broker = FakeBroker()
    starter = autostart.Autostarter(broker, {}, autostart.AutostartConfig(WorkerOptions("")),
                                    launcher=None)
    define = broker.handlers[DEFINE_SERVICE]
    first, second = (define([lj_definition(sigma)])[1].decode() for sigma in (2.1, 2.2))
    broker.workers[first] = 1  # the older one has a worker: it stays
    third = define([lj_definition(2.3)])[1].decode()
    assert list(starter.by_clients) == [first, third] and second not in starter.registry
    broker.workers[third] = 1
    assert define([lj_definition(2.4)])[0] == b"403"  # every one has a worker
    assert define([lj_definition(2.1)]) == [b"200", first.encode()]  # a known one: served
    broker.workers[first] = 0  # its worker left: the first, used last, makes room now
    assert define([lj_definition(2.2)])[0] == b"200"
    assert second in starter.by_clients and first not in starter.by_clients
