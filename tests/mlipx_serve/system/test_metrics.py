"""The model broker's Prometheus endpoint against the real thing: a broker with
``--metrics``, known traffic (structures in chunks and alone, a structure the model fails,
one that kills its workers), the endpoint fetched over HTTP and read with
prometheus_client's own parser."""

from __future__ import annotations

import pytest
from ase import Atoms
from support import HELPERS, copper_cells, free_port, scraped

from mlipx_serve import evaluate

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def cells(count: int) -> list[Atoms]:
    return copper_cells(count, rattle=0.02)


def uranium() -> Atoms:
    return Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]])


def test_a_scrape_tells_structures_failures_by_kind_and_worker_lives(serve_system):
    port = free_port()
    # room for emt's worker beside fatal-on-uranium's and its replacement, which may start
    # before the one that died is reaped (on 2 cores the default limit is 2; test_capacity
    # tests the limit)
    bus = serve_system.broker("--autostart", "--models", str(HELPERS / "models.py"),
                              "--metrics", str(port), "--max-workers", "4")
    evaluate("emt", cells(12), broker=bus, chunk_size=4)  # 12 structures, 3 requests
    evaluate("emt", cells(3), broker=bus, chunk_size=1)  # 3 more, alone
    failed = evaluate("emt", [uranium()], broker=bus, on_error="keep")  # the model raises
    lost = evaluate("fatal-on-uranium", [uranium()], broker=bus, on_error="keep")
    assert "error" in failed[0].info and "workers died" in lost[0].info["error"]
    sample = scraped(port)


    assert sample("mlipx_structures_total", model="emt", outcome="served") == 15
    assert sample("mlipx_structures_total", model="emt", outcome="failed") == 1
    assert sample("mdp_requests_total", service="emt", outcome="served") == 6
    assert sample("mdp_requests_total", service="emt", outcome="worker_error") == 1
    assert sample("mdp_requests_total", service="fatal-on-uranium", outcome="lost") == 1
    assert sample("mlipx_worker_started_total", model="emt") == 1
    assert sample("mlipx_worker_exited_total", model="fatal-on-uranium") >= 1
    assert sample("mlipx_worker_processes", model="emt", state="idle") == 1
    assert sample("mlipx_queued_structures", model="emt") == 0
    assert sample("mdp_work_seconds_count", service="emt") == 7
    assert sample("mdp_queue_wait_seconds_sum", service="emt") >= 0
