"""What is private to the user: the directories (made owner-only, refused when someone else
could have planted them) and the files written into them."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from mlipx_serve.wire import endpoints, private
from mlipx_serve.wire.private import cluster_dir, open_to_others, private_file

pytestmark = pytest.mark.timeout(10)


def test_the_private_directory_is_made_owner_only(runtime):
    made = private.private_dir()
    assert made == runtime / "mlipx" and made.stat().st_mode & 0o777 == 0o700
    made.chmod(0o755)
    assert private.private_dir().stat().st_mode & 0o777 == 0o700
    assert endpoints.default_broker() == f"ipc://{made / 'broker.ipc'}"


@pytest.mark.parametrize("plant, problem", [
    (lambda path, own: path.symlink_to(own), "is a symbolic link"),
    (lambda path, own: path.write_text(""), "is not a directory"),
])
def test_a_planted_name_is_refused(runtime, plant, problem):
    own = runtime / "mine"
    own.mkdir(mode=0o700)
    plant(runtime / "mlipx", own)
    with pytest.raises(PermissionError, match=problem):
        private.private_dir()


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a directory away here")
def test_someone_elses_directory_is_refused(runtime):
    (runtime / "mlipx").mkdir(mode=0o700)
    os.chown(runtime / "mlipx", 54321, -1)
    with pytest.raises(PermissionError, match="belongs to another user"):
        private.private_dir()


def test_the_cluster_directory_is_private_and_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIPX_SERVE_CLUSTER_DIR", str(tmp_path / "shared"))
    made = cluster_dir()
    assert made == tmp_path / "shared" and stat.S_IMODE(made.stat().st_mode) == 0o700
    monkeypatch.delenv("MLIPX_SERVE_CLUSTER_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cluster_dir() == tmp_path / "home" / ".mlipx-serve"
    (tmp_path / "planted").symlink_to(tmp_path / "shared")
    monkeypatch.setenv("MLIPX_SERVE_CLUSTER_DIR", str(tmp_path / "planted"))
    with pytest.raises(PermissionError, match="MLIPX_SERVE_CLUSTER_DIR"):
        cluster_dir()


def test_a_private_file_is_the_users_alone_from_its_first_byte(tmp_path):
    made = private_file(tmp_path, b"secret", suffix=".pkl")
    assert made.parent == tmp_path and made.suffix == ".pkl" and made.read_bytes() == b"secret"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    (tmp_path / "named.json").write_text("old")
    named = private_file(tmp_path, b"new", name="named.json")
    assert named.read_bytes() == b"new" and stat.S_IMODE(named.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([made.name, "named.json"])


def test_an_ipc_socket_is_open_to_others_unless_its_file_or_a_directory_is_closed():
    directory = Path(tempfile.mkdtemp(dir="/tmp"))  # (pytest's own tmp_path is closed)
    try:
        directory.chmod(0o755)
        socket_file = directory / "broker.ipc"
        socket_file.touch(mode=0o600)
        socket_file.chmod(0o600)
        assert open_to_others(f"ipc://{socket_file}") == ""  # as a broker binds it
        socket_file.chmod(0o666)
        assert "open to other users" in open_to_others(f"ipc://{socket_file}")
        directory.chmod(0o700)  # nobody else passes through the directory
        assert open_to_others(f"ipc://{socket_file}") == ""
    finally:
        shutil.rmtree(directory)
    assert "abstract socket" in open_to_others("ipc://@mlipx-broker")
    assert "cannot be read" in open_to_others(f"ipc://{directory}/gone.ipc")
