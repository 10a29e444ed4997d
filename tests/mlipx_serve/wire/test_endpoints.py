"""Endpoints: the defaults, the workers' path beside the clients', and every malformed
value refused in one line naming it."""

from __future__ import annotations

import re

import pytest

from mlipx_serve import (
    MlipxServeError,
    RemoteCalculator,
)
from mlipx_serve.errors import EndpointError
from mlipx_serve.wire import endpoints as paths

pytestmark = pytest.mark.timeout(10)


def test_the_environment_names_another_broker(runtime, monkeypatch):
    monkeypatch.setenv("MLIPX_SERVE_BROKER", "tcp://localhost:5555")
    assert paths.default_broker() == "tcp://localhost:5555"


@pytest.mark.parametrize("client, worker", [
    ("ipc:///x/my-broker.ipc", "ipc:///x/my-broker-workers.ipc"),
    ("ipc:///x/my-broker-workers.ipc", "ipc:///x/my-broker-workers.ipc"),
    ("ipc:///x/sock", "ipc:///x/sock-workers"),
    ("tcp://head:5555", "tcp://head:5555"),
])
def test_workers_get_an_endpoint_beside_the_clients(client, worker):
    assert paths.worker_endpoint(client) == worker


def test_a_bare_path_is_an_ipc_endpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.normalise("b.ipc") == f"ipc://{tmp_path / 'b.ipc'}"
    assert paths.normalise("tcp://h:1") == "tcp://h:1"


@pytest.mark.parametrize("value, problem", [
    ("http://localhost:5555", "is not a broker endpoint"),
    ("tcp://127.0.0.1", "has no port"),
    ("tcp://[::1]", "has no port"),
    ("tcp://127.0.0.1:99999", "has no valid port"),
    ("tcp://*:5555", "names every interface"),
    ("ipc://", "has no path"),
])
def test_a_malformed_endpoint_is_one_line_naming_it_and_the_accepted_forms(value, problem):
    with pytest.raises(EndpointError) as caught:
        paths.endpoint(value, "--broker")
    said = str(caught.value)
    assert isinstance(caught.value, MlipxServeError) and isinstance(caught.value, ValueError)
    assert said.startswith(f"--broker {value!r} {problem}") and "\n" not in said
    assert "tcp://HOST:PORT" in said


def test_a_host_and_port_without_tcp_gets_the_endpoint_it_meant():
    with pytest.raises(EndpointError, match=re.escape("use tcp://localhost:5555 for a host")):
        paths.endpoint("localhost:5555")


def test_an_unresolvable_host_says_so():
    with pytest.raises(EndpointError, match="'nosuchhost.invalid', that cannot be resolved"):
        paths.endpoint("tcp://nosuchhost.invalid:5555", "MLIPX_SERVE_BROKER")


@pytest.mark.parametrize("value, bind", [
    ("ipc:///tmp/b.ipc", False), ("tcp://localhost:5555", False), ("tcp://[::1]:5555", False),
    ("tcp://*:0", True), ("tcp://*:*", True), ("tcp://127.0.0.1:0", True),
])
def test_good_endpoints_pass_as_they_are(value, bind):
    assert paths.endpoint(value, bind=bind) == value


def test_the_variable_is_checked_and_named(runtime, monkeypatch):
    monkeypatch.setenv("MLIPX_SERVE_BROKER", "tcp://127.0.0.1")
    for read in (paths.default_broker, paths.local_broker, lambda: RemoteCalculator("emt")):
        with pytest.raises(EndpointError, match=re.escape("MLIPX_SERVE_BROKER='tcp://127.0.0.1'")):
            read()

