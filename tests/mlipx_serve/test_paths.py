"""Where the broker listens by default, and the private directory it lives in."""

from __future__ import annotations

import os

import pytest

from mlipx_serve import paths

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
    monkeypatch.setenv("MLIPX_SERVE_BROKER", "tcp://head:5555")
    assert paths.default_broker() == "tcp://head:5555"


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
