"""The worker library in one process: a real broker and worker on real sockets."""

from __future__ import annotations

import json

import pytest
import support

from mdp.broker import Broker
from mdp.client import Client
from mdp.core import BrokerConfig
from mdp.errors import BROKER_ERROR_MARKER, WORKER_ERROR_MARKER, WorkerError
from mdp.worker import Worker


@pytest.fixture
def endpoint(broker) -> str:
    return broker.endpoints[0]


@pytest.fixture
def serve(in_process_worker):
    def start(handler) -> Worker:
        worker = in_process_worker("svc", handler)
        assert worker.connected.wait(10)
        return worker

    return start


@pytest.mark.parametrize("first", [BROKER_ERROR_MARKER, WORKER_ERROR_MARKER])
def test_a_reply_that_looks_like_an_error_is_refused_and_the_worker_goes_on(endpoint, serve,
                                                                          first):
    serve(lambda frames: [first, *frames] if frames[0] == b"fake" else frames)
    with Client(endpoint, timeout=10, retries=0) as client:
        with pytest.raises(WorkerError) as caught:
            client.request("svc", b"fake")
        assert caught.value.error_type == "ValueError" and "reserved" in caught.value.message
        assert client.request("svc", b"real") == [b"real"]

def test_worker_names_itself_after_its_process(endpoint, serve):
    worker = serve(lambda frames: frames)
    with Client(endpoint, timeout=10, retries=0) as client:
        status = json.loads(client.request("mmi.status")[0])
    assert [w["id"] for w in status["workers"]] == [worker.identity]
    host, pid, _ = worker.identity.split(":")
    assert int(pid) > 0 and host


def test_a_handler_error_carries_its_traceback_and_the_worker(endpoint, serve):
    def handler(frames):
        return {}["missing key"]

    worker = serve(handler)
    with Client(endpoint, timeout=10, retries=0) as client:
        with pytest.raises(WorkerError) as caught:
            client.request("svc", b"x")
    error = caught.value
    assert error.error_type == "KeyError" and error.worker == worker.identity
    assert error.traceback.startswith("Traceback (most recent call last)")
    assert "in handler" in error.traceback and "KeyError: 'missing key'" in error.traceback


@pytest.mark.parametrize("name", [b"", b"n" * 256])
def test_a_worker_refuses_a_service_name_the_broker_would_refuse(name):
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        Worker("ipc:///nowhere", name, lambda frames: frames)


def test_the_pulse_heartbeats_while_a_long_handler_runs(tmp_path):
    """A plain ROUTER stands in for the broker: while the handler sleeps for a second,
    HEARTBEATs keep coming (the handler runs in the socket's thread, the pulse beats)."""
    import time

    import zmq

    from mdp import protocol as p

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/fake-broker.ipc")
    worker = Worker(f"ipc://{tmp_path}/fake-broker.ipc", "svc",
                    lambda frames: time.sleep(1.0) or [b"done"], heartbeat_interval=0.1)
    worker.start()
    try:
        identity, *ready = router.recv_multipart()
        assert ready == p.worker_ready(p.Dialect.V02, b"svc")
        router.send_multipart([identity, *p.to_worker_request(p.Dialect.V02, b"id", [b"x"])])
        beats = 0
        while router.poll(5000):
            _, header, command, *rest = router.recv_multipart()
            assert header == p.WORKER_V02
            if command == p.W_HEARTBEAT_V02:
                beats += 1
            elif command == p.W_FINAL_V02:
                assert rest[-1] == b"done"
                break
        assert beats >= 5  # ten intervals passed while it slept
    finally:
        worker.stop()
        worker.join(10)
        router.close(linger=0)


def test_a_worker_tells_when_a_broker_registers_it_and_loses_it_and_why_it_left(tmp_path):
    news: list[bool] = []
    worker = Worker(f"ipc://{tmp_path}/b.ipc", "svc", lambda frames: frames,
                    heartbeat_interval=0.2, on_registration=news.append)
    worker.start()
    try:
        assert worker.connected.wait(10) and not worker.registered.is_set()  # no broker yet
        broker = Broker(f"ipc://{tmp_path}/b.ipc", config=BrokerConfig(heartbeat_interval=0.2))
        broker.start()
        assert worker.registered.wait(10) and news == [True]
        broker.stop("the test is done with it")
        broker.join(10)
        assert broker.stop_reason == "the test is done with it"
        support.wait_until(lambda: news == [True, False], "the worker to lose its broker", 10)
    finally:
        worker.stop("the test ends")
        worker.join(10)
    assert worker.stop_reason == "the test ends" and news == [True, False]


def test_an_idle_worker_says_it_left_for_want_of_requests(tmp_path):
    worker = Worker(f"ipc://{tmp_path}/b.ipc", "svc", lambda frames: frames,
                    heartbeat_interval=0.2, idle_timeout=0.5)
    worker.start()
    worker.join(10)
    assert worker.stop_reason == "no request for 0.5 s"
