"""Where the model broker listens when nobody says otherwise.

The default is an IPC socket in a directory only this user can open: other users on a
shared machine cannot reach (or impersonate) the broker. Workers get an endpoint of their
own beside the clients' one; the broker binds both to one socket, so a worker or client
given either path finds it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BROKER_ENV = "MLIPX_SERVE_BROKER"
SOCKET_NAME = "broker.ipc"


def private_dir() -> Path:
    """``$XDG_RUNTIME_DIR/mlipx`` or ``<tmp>/mlipx-<uid>``, created with mode 0700."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "mlipx" if runtime else \
        Path(tempfile.gettempdir()) / f"mlipx-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if base.stat().st_uid != os.getuid():
        raise PermissionError(f"{base} belongs to another user; set {BROKER_ENV} or "
                              f"XDG_RUNTIME_DIR to a directory of your own")
    base.chmod(0o700)
    return base


def default_broker() -> str:
    """The client endpoint: ``$MLIPX_SERVE_BROKER`` or the private default."""
    return os.environ.get(BROKER_ENV) or f"ipc://{private_dir() / SOCKET_NAME}"


def worker_endpoint(client_endpoint: str) -> str:
    """``ipc:///x/my-broker.ipc`` -> ``ipc:///x/my-broker-workers.ipc``; tcp stays as is."""
    if not client_endpoint.startswith("ipc://"):
        return client_endpoint
    path = client_endpoint[len("ipc://"):]
    stem, dot, suffix = path.rpartition(".")
    if not dot or "/" in suffix:
        return f"ipc://{path}-workers"
    if stem.endswith("-workers"):
        return client_endpoint
    return f"ipc://{stem}-workers.{suffix}"


def normalise(endpoint: str) -> str:
    """Accept a bare filesystem path as an IPC endpoint."""
    return endpoint if "://" in endpoint else f"ipc://{Path(endpoint).absolute()}"
