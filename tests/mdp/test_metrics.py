"""The broker's Prometheus endpoint (mdp/metrics.py): a real broker and worker, the metrics
fetched over HTTP and read with prometheus_client's own parser."""

from __future__ import annotations

import pytest
from support import free_port, scraped

from mdp.client import Client
from mdp.errors import WorkerError
from mdp.metrics import metrics_address, serve_metrics

pytestmark = pytest.mark.timeout(60)


def test_a_scrape_tells_requests_by_outcome_queue_waits_and_work_times(broker,
                                                                      in_process_worker):
    port = free_port()
    server, _ = serve_metrics(broker, str(port))
    in_process_worker("echo", lambda frames: frames if frames != [b"fail"] else 1 / 0)
    try:
        with Client(broker.endpoints[0], timeout=10, retries=0) as client:
            for n in range(5):
                client.request("echo", str(n))
            with pytest.raises(WorkerError):
                client.request("echo", "fail")
        sample = scraped(port)
    finally:
        server.shutdown()


    assert sample("mdp_requests_total", service="echo", outcome="served") == 5
    assert sample("mdp_requests_total", service="echo", outcome="worker_error") == 1
    assert sample("mdp_requests_total", service="echo", outcome="lost") == 0
    assert sample("mdp_units_total", service="echo", outcome="served") == 5
    assert sample("mdp_queue_wait_seconds_count", service="echo") == 6
    assert sample("mdp_work_seconds_count", service="echo") == 6
    assert sample("mdp_work_seconds_bucket", service="echo", le="+Inf") == 6
    assert sample("mdp_workers", service="echo", state="idle") == 1
    assert sample("mdp_broker_messages_total", kind="request") == 6
    assert sample("mdp_broker_uptime_seconds") > 0


@pytest.mark.parametrize("given, host, port", [("9464", "127.0.0.1", 9464),
                                               ("0.0.0.0:9100", "0.0.0.0", 9100),
                                               ("[::1]:9100", "::1", 9100)])
def test_an_address_is_a_port_or_host_and_port(given, host, port):
    assert metrics_address(given) == (host, port)


@pytest.mark.parametrize("given", ["", "host", "host:http", "70000", "0"])
def test_anything_else_is_refused_with_the_forms_that_work(given):
    with pytest.raises(ValueError, match="takes PORT or HOST:PORT"):
        metrics_address(given)
