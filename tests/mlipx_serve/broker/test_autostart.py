"""Autostart's start policy: one start at a time up to the limit, the cores shared out."""

from __future__ import annotations

import pytest

from mdp.core import Event
from mlipx_serve.broker.autostart import wants_worker
from mlipx_serve.broker.local_launcher import thread_share


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

