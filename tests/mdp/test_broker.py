"""The broker's socket loop in one process: the API it offers the layer above, and how it
tells which peer a closed connection was."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import support
import zmq

from mdp import Broker, Client, EventKind
from mdp import protocol as p
from mdp.broker import Connections
from mdp.errors import ServiceStartFailed


def in_loop(broker: Broker, fn):
    """Run ``fn`` in the broker's loop thread and return what it returned."""
    done = threading.Event()
    result = []
    broker.call_soon(lambda: (result.append(fn()), done.set()))
    assert done.wait(10)
    return result[0]


def test_an_mmi_handler_added_by_the_layer_above_answers(broker):
    broker.add_mmi_handler("mmi.mine", lambda body: [b"mine", *body])
    with Client(broker.endpoints[0], timeout=10, retries=0) as client:
        assert client.request("mmi.mine", "x") == [b"mine", b"x"]
    with pytest.raises(ValueError, match="start with 'mmi.'"):
        broker.add_mmi_handler("mine", lambda body: [])


def test_a_hook_hears_events_from_the_moment_it_is_added(broker, in_process_worker):
    assert not broker.core.emit_events  # nobody listens: no Event objects are made
    heard = []
    in_loop(broker, lambda: broker.add_hook(heard.append))
    worker = in_process_worker("echo", lambda frames: frames)
    support.wait_until(lambda: heard, "the worker-ready event", 10)
    assert heard[0].kind is EventKind.WORKER_READY and heard[0].service == "echo"
    assert heard[0].worker == worker.identity


def test_service_workers_and_fail_queued(broker, in_process_worker):
    endpoint = broker.endpoints[0]
    assert in_loop(broker, lambda: broker.service_workers("echo")) == 0
    in_process_worker("echo", lambda frames: frames)
    support.wait_until(lambda: in_loop(broker, lambda: broker.service_workers(b"echo")),
                       "the worker to register", 10)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(Client(endpoint, timeout=30).request, "nobody", "x")
        support.wait_until(lambda: in_loop(broker, lambda: broker.core.status(0))
                           ["services"].get("nobody", {}).get("queued"),
                           "the request to be queued", 10)
        error = ServiceStartFailed("could not start 'nobody'", "nobody")
        in_loop(broker, lambda: broker.fail_queued("nobody", error))
        with pytest.raises(ServiceStartFailed, match="could not start"):
            waiting.result(timeout=10)


def test_the_ipc_file_mode_can_be_left_to_the_umask():
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="mdp-b-") as directory:
        path = f"{directory}/b.ipc"
        broker = Broker(f"ipc://{path}", ipc_mode=None)
        broker.start()
        try:
            umask = os.umask(0)
            os.umask(umask)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o777 & ~umask
        finally:
            broker.stop()
            broker.join(10)
        assert not os.path.exists(path)


def test_a_worker_that_answers_and_leaves_at_once_is_heard_in_that_order(broker):
    """Its reply comes before the report that its connection closed; handled the other
    way round, the request would go back to the queue and its answer be dropped. (The bare
    socket sends no heartbeats: the fixture's liveness keeps it alive through a stall of
    this process between its READY and the client's request.)"""
    endpoint = broker.endpoints[0]
    with Client(endpoint, timeout=20, retries=0) as client, ThreadPoolExecutor(1) as pool:
        for n in range(30):
            worker = zmq.Context.instance().socket(zmq.DEALER)
            worker.connect(endpoint)
            worker.send_multipart(p.worker_ready(p.Dialect.V02, b"once"))
            reply = pool.submit(client.request, "once", str(n))
            request = next_request(worker)
            worker.send_multipart(p.worker_reply(p.Dialect.V02, request.address,
                                                 [b"done", request.body[0]], True))
            worker.close(linger=1000)  # no DISCONNECT: only the closed connection tells
            assert reply.result(timeout=30) == [b"done", str(n).encode()]


def next_request(worker: zmq.Socket) -> p.WorkerRequest:
    """The next request to a bare worker socket, past the heartbeats a busy machine may
    let the broker send first."""
    while True:
        assert worker.poll(20_000), "no request came"
        message = p.parse_worker_message(p.Dialect.V02, worker.recv_multipart())
        if isinstance(message, p.WorkerRequest):
            return message


class FrameFrom:
    """A received frame as far as ``Connections`` reads it: the descriptor it came on."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def get(self, option: int) -> int:
        assert option == zmq.SRCFD
        if self.fd is None:
            raise zmq.ZMQError(errno.EINVAL)  # as libzmq answers for inproc
        return self.fd


def test_connections_turn_closed_descriptors_into_peers():
    connections = Connections()
    assert connections.learn(b"a", FrameFrom(5)) is None
    assert connections.learn(b"b", FrameFrom(6)) is None
    assert connections.knows(b"a") and connections.knows(b"b")
    assert connections.closed(5) == b"a" and not connections.knows(b"a")
    assert connections.closed(5) is None  # told once
    assert connections.closed(99) is None  # a peer that never sent anything
    # b's closing was never reported, yet its descriptor comes back: b is gone.
    assert connections.learn(b"c", FrameFrom(6)) == b"b"
    assert not connections.knows(b"b") and connections.closed(6) == b"c"
    assert connections.learn(b"inproc", FrameFrom(None)) is None
    assert connections.knows(b"inproc")


def test_a_peer_s_last_messages_after_its_close_is_reported_are_its_old_connection_s():
    connections = Connections()
    connections.learn(b"a", FrameFrom(5))
    assert connections.closed(5) == b"a"
    assert connections.came_before_close(b"a", FrameFrom(5))  # read late, sent before
    assert not connections.came_before_close(b"a", FrameFrom(7))  # back, on a new one
    assert not connections.came_before_close(b"b", FrameFrom(5))
    connections.forget(b"a")  # told the core
    assert not connections.came_before_close(b"a", FrameFrom(5))
    connections.learn(b"b", FrameFrom(6))
    connections.closed(6)
    connections.learn(b"b", FrameFrom(8))  # back on a new connection before it was told
    assert not connections.came_before_close(b"b", FrameFrom(6)) and connections.knows(b"b")
