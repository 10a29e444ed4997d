"""Where the broker listens by default, and the private directory it lives in."""

from __future__ import annotations

import logging
import os
import re

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mlipx_serve import (
    MlipxServeError,
    Models,
    RemoteCalculator,
    evaluate,
    get_broker_status,
    serve_model,
    served_calculator_or_none,
)
from mlipx_serve.errors import EndpointError
from mlipx_serve.wire import endpoints as paths

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("MLIPX_SERVE_BROKER", raising=False)
    return tmp_path


def test_the_private_directory_is_made_owner_only(runtime):
    made = paths.private_dir()
    assert made == runtime / "mlipx" and made.stat().st_mode & 0o777 == 0o700
    made.chmod(0o755)
    assert paths.private_dir().stat().st_mode & 0o777 == 0o700
    assert paths.default_broker() == f"ipc://{made / 'broker.ipc'}"


@pytest.mark.parametrize("plant, problem", [
    (lambda path, own: path.symlink_to(own), "is a symbolic link"),
    (lambda path, own: path.write_text(""), "is not a directory"),
])
def test_a_planted_name_is_refused(runtime, plant, problem):
    own = runtime / "mine"
    own.mkdir(mode=0o700)
    plant(runtime / "mlipx", own)
    with pytest.raises(PermissionError, match=problem):
        paths.private_dir()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory away here")
def test_someone_elses_directory_is_refused(runtime):
    (runtime / "mlipx").mkdir(mode=0o700)
    os.chown(runtime / "mlipx", 54321, -1)
    with pytest.raises(PermissionError, match="belongs to another user"):
        paths.private_dir()


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


# ------------------------------------------------------------ endpoints where they come in


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


@pytest.mark.parametrize("enter", [
    lambda endpoint: RemoteCalculator("emt", endpoint),
    lambda endpoint: Models(endpoint),
    lambda endpoint: get_broker_status(endpoint),
    lambda endpoint: evaluate("emt", [bulk("Cu")], broker=endpoint),
    lambda endpoint: serve_model("my-emt", EMT, broker=endpoint),
], ids=["RemoteCalculator", "Models", "get_broker_status", "evaluate", "serve_model"])
def test_the_api_refuses_a_malformed_endpoint_at_once(enter):
    with pytest.raises(EndpointError, match="'http://localhost:5555' is not a broker endpoint"):
        enter("http://localhost:5555")


def test_serving_falls_back_with_one_warning_naming_the_endpoint(caplog):
    with caplog.at_level(logging.WARNING):
        assert served_calculator_or_none("emt", "http://localhost:5555") is None
    named = [r for r in caplog.records if "'http://localhost:5555'" in r.getMessage()]
    assert len(named) == 1 and "tcp://HOST:PORT" in named[0].getMessage()
