"""The broker's side of a cluster: a tcp endpoint for workers on other nodes, with CURVE.

Scripts beside the broker keep its private ipc endpoint, in the clear; the workers' side
binds tcp and turns CURVE on by itself: the broker makes two key pairs in its private
directory (its own, and one for the workers it launches, which it alone admits) and
hands the workers theirs through the connection file (``connection.py``).
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from mdp.security import create_key_pair, load_key_file
from mlipx_serve.wire import endpoints as paths
from mlipx_serve.wire.connection import Connection, new_broker_id

ANY_HOST = ("*", "0.0.0.0", "::", "[::]")
DEFAULT_BIND = "tcp://*:0"  # every interface, a port the system picks


@dataclass
class ClusterSide:
    broker_id: str
    bind: str  # what the worker socket binds, e.g. tcp://*:0
    keys: Path  # the private directory with both key pairs and the admitted keys
    connection_file: Path

    @classmethod
    def create(cls, bind: str | None = None, directory: Path | None = None) -> ClusterSide:
        """Key pairs in a fresh private directory; nothing is bound or written yet."""
        bind = bind or DEFAULT_BIND
        if not bind.startswith("tcp://") or ":" not in bind[len("tcp://"):]:
            raise ValueError(f"the workers' endpoint must be tcp://HOST:PORT (PORT 0: any "
                             f"free one), not {bind!r}")
        broker_id = new_broker_id()
        keys = paths.private_dir() / f"cluster-{broker_id}"
        create_key_pair(keys, "broker")
        public, _ = create_key_pair(keys, "workers")
        (keys / "clients").mkdir(mode=0o700)
        shutil.copy(public, keys / "clients")
        connection_file = (directory or paths.cluster_dir()) / f"{broker_id}.json"
        return cls(broker_id, bind, keys, connection_file)

    def broker_options(self) -> dict:
        """The ``mdp.broker.Broker`` keyword arguments of the CURVE worker side."""
        return {"worker_bind": [self.bind], "curve_secret_key": self.keys / "broker.key_secret",
                "curve_clients": self.keys / "clients", "curve_workers_only": True}

    def write_connection(self, bound: str) -> Connection:
        """Once bound: the connection file, with ``bound`` as the nodes reach it."""
        server_key, _ = load_key_file(self.keys / "broker.key")
        public_key, secret_key = load_key_file(self.keys / "workers.key_secret", secret=True)
        connection = Connection(self.broker_id, reachable(bound), server_key.decode(),
                                public_key.decode(), secret_key.decode())
        connection.write(self.connection_file)
        return connection

    def close(self) -> None:
        """Remove the connection file (its workers leave) and the keys."""
        self.connection_file.unlink(missing_ok=True)
        shutil.rmtree(self.keys, ignore_errors=True)


def reachable(bound: str) -> str:
    """``tcp://*:5555`` -> ``tcp://thishost:5555``: an address other nodes can connect to."""
    host, _, port = bound[len("tcp://"):].rpartition(":")
    if host in ANY_HOST:
        host = socket.gethostname()
    return f"tcp://{host}:{port}"
