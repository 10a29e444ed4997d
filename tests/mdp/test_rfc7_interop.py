"""Our broker, with its default settings, against MDP/0.1 peers written from RFC 7 the way
the zguide's reference client and worker are (helpers/rfc7_client.py, rfc7_worker.py):
a REQ client that checks the service frame of every reply, and a single-threaded worker
that sends no heartbeat while its handler runs. All of them are real processes.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import zmq

from mdp import protocol as p
from mdp.errors import BROKER_ERROR_MARKER

pytestmark = pytest.mark.timeout(90)

MARKER = BROKER_ERROR_MARKER.decode()


def replies(client) -> list[dict]:
    assert client.wait() == 0, client.log()
    return [json.loads(line) for line in client.log().splitlines()]


def taken(log, tag: str) -> list[int]:
    """The pids of the workers that took requests tagged ``tag``, in order."""
    if not log.exists():
        return []
    return [int(pid) for name, pid in (line.split() for line in log.read_text().splitlines())
            if name == tag]


def test_an_expired_request_names_its_service_and_the_client_goes_on(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.default_broker(endpoint, "--expiry", "1")
    client = mdp_system.rfc7_client(endpoint, 30, ["nobody", "x"], ["mmi.service", "nobody"])
    expired, mmi = replies(client)
    assert expired["service"] == "nobody"
    assert expired["body"][:3] == [MARKER, "504", "expired"]
    assert mmi == {"service": "mmi.service", "body": ["404"]}


def test_a_refused_request_names_its_service_and_the_client_goes_on(mdp_system):
    endpoint = mdp_system.ipc("bus")
    mdp_system.default_broker(endpoint, "--queue-limit", "1")
    waiting = zmq.Context.instance().socket(zmq.DEALER)
    waiting.setsockopt(zmq.LINGER, 0)
    waiting.connect(endpoint)
    try:
        waiting.send_multipart(p.client_request(p.Dialect.V02, b"nobody", [b"first"]))
        mdp_system.wait_until(lambda: mdp_system.service(endpoint, "nobody")["queued"] == 1,
                              "the first request to be queued")
        client = mdp_system.rfc7_client(endpoint, 30, ["nobody", "x"],
                                        ["mmi.service", "nobody"])
        full, mmi = replies(client)
    finally:
        waiting.close()
    assert full["service"] == "nobody"
    assert full["body"][:3] == [MARKER, "503", "queue-full"]
    assert mmi == {"service": "mmi.service", "body": ["404"]}


@pytest.mark.slow
def test_a_ten_second_handler_is_answered_once(mdp_system, tmp_path):
    """Longer than the default 2.5 s x 3 that an idle worker may stay silent."""
    endpoint = mdp_system.ipc("bus")
    mdp_system.default_broker(endpoint)
    log = tmp_path / "taken.log"
    worker = mdp_system.rfc7_worker(endpoint, "slow", log)
    mdp_system.wait_workers(endpoint, "slow", 1)
    (before,) = mdp_system.service_workers(endpoint, "slow")
    client = mdp_system.rfc7_client(endpoint, 60, ["slow", "take", "once", "10"])
    (reply,) = replies(client)
    assert reply == {"service": "slow", "body": [str(worker.pid), "once"]}
    assert taken(log, "once") == [worker.pid]  # the handler ran once
    (after,) = mdp_system.service_workers(endpoint, "slow")
    assert after["id"] == before["id"] and after["served"] == 1  # never given up
    assert mdp_system.status(endpoint)["counters"]["replies"] == 1


def test_a_killed_busy_worker_hands_its_request_to_another_at_once(mdp_system, tmp_path):
    """The busy timeout is 900 s: only the closed connection can tell the broker."""
    endpoint = mdp_system.ipc("bus")
    mdp_system.default_broker(endpoint)
    log = tmp_path / "taken.log"
    workers = [mdp_system.rfc7_worker(endpoint, "slow", log) for _ in range(2)]
    mdp_system.wait_workers(endpoint, "slow", 2)
    client = mdp_system.rfc7_client(endpoint, 30, ["slow", "take", "kill-me", "600"])
    (victim,) = mdp_system.wait_until(lambda: taken(log, "kill-me"), "a worker to take it")
    os.kill(victim, signal.SIGKILL)
    (reply,) = replies(client)
    (survivor,) = [w.pid for w in workers if w.pid != victim]
    assert reply == {"service": "slow", "body": [str(survivor), "kill-me"]}
    assert taken(log, "kill-me") == [victim, survivor]
    assert mdp_system.service(endpoint, "slow")["workers"] == 1
