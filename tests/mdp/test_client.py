"""``mdp.client.ask``, the one-shot request: against a real broker and worker in this
process, against no broker, and against a stand-in broker that loses the request."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq

from mdp import protocol as p
from mdp.broker import Broker
from mdp.client import ask
from mdp.core import BrokerConfig
from mdp.errors import BrokerUnavailable, RequestExpired, WorkerError
from mdp.worker import Worker

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0  # seconds anything may take on a busy machine


def handle(frames: list) -> list:
    if frames and frames[0] == b"raise":
        raise RuntimeError("asked to")
    return [b"echo", *frames]


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A broker with an echo worker, both in threads of this process."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="mdp-c-") as directory:
        endpoint = f"ipc://{directory}/b.ipc"
        broker = Broker(endpoint, config=BrokerConfig(heartbeat_interval=0.2,
                                                      request_expiry=0.5))
        broker.start()
        worker = Worker(endpoint, "echo", handle, heartbeat_interval=0.2)
        worker.start()
        try:
            assert worker.registered.wait(WAIT)
            yield endpoint
        finally:
            worker.stop()
            worker.join(10)
            broker.stop()
            broker.join(10)


def test_ask_returns_the_reply_as_bytes(endpoint):
    assert ask(endpoint, "echo", "hi", b"\x00", timeout=WAIT) == [b"echo", b"hi", b"\x00"]
    assert ask(endpoint, b"mmi.service", "echo", timeout=WAIT) == [b"200"]


def test_ask_raises_the_typed_errors_of_a_request(endpoint):
    with pytest.raises(WorkerError, match="asked to") as caught:
        ask(endpoint, "echo", "raise", timeout=WAIT)
    assert caught.value.service == "echo"
    with pytest.raises(RequestExpired) as expired:  # nobody serves it: expires in 0.5 s
        ask(endpoint, "nobody", timeout=WAIT)
    assert expired.value.service == "nobody"


def test_ask_without_a_broker_gives_up_within_the_broker_timeout(tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.ipc"
    with pytest.raises(BrokerUnavailable, match=r"no connection within 0\.5 s"):
        ask(endpoint, "echo", timeout=WAIT, broker_timeout=0.5)


def test_ask_closes_its_connection(endpoint):
    context = zmq.Context()
    try:
        assert ask(endpoint, "echo", timeout=WAIT, context=context) == [b"echo"]
        ended = threading.Thread(target=context.term)  # it waits for every open socket
        ended.start()
        ended.join(WAIT)
        assert not ended.is_alive(), "ask left a socket open"
    finally:
        if not context.closed:
            context.destroy(linger=0)


def test_ask_does_not_send_again_when_the_broker_is_lost(tmp_path):
    """A stand-in broker takes the request and goes away: a Client with retries would
    send it on a fresh connection; ask raises at once."""
    endpoint = f"ipc://{tmp_path}/lost.ipc"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(endpoint)
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(ask, endpoint, "echo", "x", timeout=WAIT, broker_timeout=WAIT)
        try:
            assert router.poll(WAIT * 1000), "no request came"
            _, *request = router.recv_multipart()
            assert request == p.client_request(p.Dialect.V02, b"echo", [b"x"])
        finally:
            router.close(linger=0)
        with pytest.raises(BrokerUnavailable, match=r"closed 1 time\(s\)"):
            asked.result(timeout=WAIT * 2)
