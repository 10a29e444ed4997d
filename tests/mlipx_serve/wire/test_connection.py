"""The connection file: private from its first byte, read back whole, its keys straight to
a socket."""

from __future__ import annotations

import stat

import pytest
import zmq

from mdp.security import ClientCurve
from mlipx_serve.errors import ServeError
from mlipx_serve.wire.connection import Connection, names_broker

pytestmark = pytest.mark.timeout(10)


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_the_connection_file_is_private_and_gives_its_keys(tmp_path):
    server_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    connection = Connection("login1-abc", "tcp://login1:5555", server_public.decode(),
                            public.decode(), secret.decode())
    path = tmp_path / "cluster" / "login1-abc.json"
    connection.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Connection.read(path) == connection
    assert names_broker(path, "login1-abc") and not names_broker(path, "login1-def")
    curve = ClientCurve(*Connection.read(path).keys())  # straight to a socket: no key file
    assert (curve.server_key, curve.public_key, curve.secret_key) == \
        (server_public, public, secret)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    path.unlink()
    assert not names_broker(path, "login1-abc")
    with pytest.raises(ServeError, match="does not exist: its broker has stopped"):
        Connection.read(path)
    path.write_text('{"format": 1, "endpoint": "tcp://x:1"}')
    with pytest.raises(ServeError, match="lacks 'broker_id'"):
        Connection.read(path)
    path.write_text("[]")
    with pytest.raises(ServeError, match="is not a connection file"):
        Connection.read(path)

