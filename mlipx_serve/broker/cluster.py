"""The broker's side of a cluster: a tcp endpoint for workers on other nodes, with CURVE.

Scripts beside the broker keep its private ipc endpoint, in the clear; the workers' side
binds tcp and turns CURVE on by itself: the broker makes two key pairs in memory (its
own, and one for the workers it launches, which it alone admits) and hands the workers
theirs through the connection file (``wire/connection.py``).
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import zmq

from mdp.security import ServerCurve
from mlipx_serve.wire.connection import Connection
from mlipx_serve.wire.private import cluster_dir

ANY_HOST = ("*", "0.0.0.0", "::", "[::]")
DEFAULT_BIND = "tcp://*:0"  # every interface, a port the system picks


@dataclass
class ClusterSide:
    broker_id: str
    bind: str  # what the worker socket binds, e.g. tcp://*:0
    broker_keys: tuple[bytes, bytes]  # (public, secret), Z85
    worker_keys: tuple[bytes, bytes]
    connection_file: Path

    @classmethod
    def create(cls, bind: str | None = None, directory: Path | None = None) -> ClusterSide:
        """Key pairs in memory; nothing is bound or written yet."""
        bind = bind or DEFAULT_BIND
        if not bind.startswith("tcp://") or ":" not in bind[len("tcp://"):]:
            raise ValueError(f"the workers' endpoint must be tcp://HOST:PORT (PORT 0: any "
                             f"free one), not {bind!r}")
        broker_id = new_broker_id()
        connection_file = (directory or cluster_dir()) / f"{broker_id}.json"
        return cls(broker_id, bind, zmq.curve_keypair(), zmq.curve_keypair(), connection_file)

    def broker_options(self) -> dict:
        """The ``mdp.broker.Broker`` keyword arguments of the CURVE worker side."""
        return {"worker_bind": [self.bind], "curve": ServerCurve(*self.broker_keys),
                "curve_clients": [self.worker_keys[0]], "curve_workers_only": True}

    def write_connection(self, bound: str) -> Connection:
        """Once bound: the connection file, with ``bound`` as the nodes reach it."""
        connection = Connection(self.broker_id, reachable(bound), self.broker_keys[0].decode(),
                                *(key.decode() for key in self.worker_keys))
        connection.write(self.connection_file)
        return connection

    def close(self) -> None:
        """Remove the connection file: its workers leave."""
        self.connection_file.unlink(missing_ok=True)


def new_broker_id() -> str:
    """Unique per broker run; readable in job names (``mlipx-serve.ID.MODEL``)."""
    host = socket.gethostname().split(".")[0] or "broker"
    return f"{host}-{secrets.token_hex(3)}"


def reachable(bound: str) -> str:
    """``tcp://*:5555`` -> ``tcp://thishost:5555``: an address other nodes can connect to."""
    host, _, port = bound[len("tcp://"):].rpartition(":")
    if host in ANY_HOST:
        host = socket.gethostname()
    return f"tcp://{host}:{port}"
