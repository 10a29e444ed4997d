"""The CURVE keys a client reaches the broker with, so that scripts need no arguments for
a broker that uses CURVE: key files given, else those the environment names, else the keys
of the connection file a script in a SLURM job is given (in memory: never on disk)."""

from __future__ import annotations

import os
from typing import Any

from mdp.security import ClientCurve
from mlipx_serve import environment
from mlipx_serve.wire.connection import Connection
from mlipx_serve.wire.endpoints import connection_from_env


def curve_options(server_key: str | os.PathLike | None = None,
                  secret_key: str | os.PathLike | None = None) -> dict[str, Any]:
    """CURVE keyword arguments for an ``mdp`` Client or Worker: the key files given, else
    those named by ``$MLIPX_SERVE_CURVE_SERVER_KEY`` and ``$MLIPX_SERVE_CURVE_SECRET_KEY``.

    No server key means a plain connection; a server key without a secret key means an
    ephemeral key pair, which only a broker that admits any key accepts. Without either,
    a connection file (``$MLIPX_SERVE_CONNECT``, when ``default_broker`` is its broker)
    gives its keys.
    """
    server_key = server_key or environment.text(environment.CURVE_SERVER_KEY)
    secret_key = secret_key or environment.text(environment.CURVE_SECRET_KEY)
    if server_key is None and secret_key is None and \
            environment.text(environment.BROKER) is None and \
            environment.text(environment.CONNECT) is not None:
        return {"curve": connection_curve(connection_from_env())}
    return {"curve_server_key": server_key, "curve_secret_key": secret_key}


def connection_curve(connection: Connection) -> ClientCurve:
    """A connection file's keys, as a worker or client socket takes them."""
    return ClientCurve(*connection.keys())
