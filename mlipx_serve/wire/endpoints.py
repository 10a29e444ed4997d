"""Where the model broker listens when nobody says otherwise.

The default is an IPC socket in a directory only this user can open: other users on a
shared machine cannot reach (or impersonate) the broker. Workers get an endpoint of their
own beside the clients' one; the broker binds both to one socket, so a worker or client
given either path finds it. A script in another SLURM job reaches its broker through the
connection file ``$MLIPX_SERVE_CONNECT`` names.
"""

from __future__ import annotations

import functools
import re
import socket
from pathlib import Path

from mlipx_serve import environment
from mlipx_serve.errors import EndpointError
from mlipx_serve.wire.connection import Connection
from mlipx_serve.wire.private import private_dir

SOCKET_NAME = "broker.ipc"
ACCEPTED = "use ipc://PATH (or a plain path) or tcp://HOST:PORT"
MAX_IPC_PATH = 107  # bytes of a Unix socket address (sun_path less its final NUL)


def chosen_broker(broker: str | None) -> str:
    """The endpoint a caller passed, checked (``endpoint``), else ``default_broker()``."""
    return endpoint(broker) if broker else default_broker()


def default_broker() -> str:
    """The client endpoint: ``$MLIPX_SERVE_BROKER``, else the tcp endpoint in the
    connection file ``$MLIPX_SERVE_CONNECT`` (a script in another SLURM job), else the
    private default."""
    if environment.text(environment.BROKER) is None and \
            environment.text(environment.CONNECT) is not None:
        return connection_from_env().endpoint
    return local_broker()


def local_broker() -> str:
    """Where a broker on this machine listens: ``$MLIPX_SERVE_BROKER`` (checked) or the
    private default (never a connection file's, which is another broker's)."""
    configured = environment.text(environment.BROKER)
    if configured is not None:
        return endpoint(configured, environment.BROKER)
    return f"ipc://{private_dir() / SOCKET_NAME}"


@functools.cache
def connection_from_env() -> Connection:
    """The connection file ``$MLIPX_SERVE_CONNECT`` names (a script in a SLURM job)."""
    return Connection.read(Path(environment.text(environment.CONNECT)))


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


def start_broker(endpoint: str) -> str:
    """The command that starts an autostarting broker at the clients' ``endpoint``: the
    path given where it is not the default one, so that the advice works as it is."""
    path = "" if endpoint == local_broker() else f" --path {endpoint}"
    return f"mlipx serve-broker --autostart{path}"


def broker_command(worker_endpoint: str) -> str | None:
    """The command that starts the broker a worker at this ipc endpoint looks for (for
    tcp, a broker on another machine maybe, there is no one command to give)."""
    if not worker_endpoint.startswith("ipc://"):
        return None
    stem, dot, suffix = worker_endpoint.rpartition(".")
    client = f"{stem.removesuffix('-workers')}{dot}{suffix}" if dot and "/" not in suffix \
        else worker_endpoint.removesuffix("-workers")
    return "mlipx serve-broker" if client == local_broker() else \
        f"mlipx serve-broker --path {client}"


def normalise(endpoint: str) -> str:
    """Accept a bare filesystem path as an IPC endpoint."""
    return endpoint if "://" in endpoint else f"ipc://{Path(endpoint).absolute()}"


def endpoint(value: str, source: str = "", *, bind: bool = False) -> str:
    """``value`` as an endpoint the bus can use (``normalise``d), or ``EndpointError``.

    Where endpoints come in (options, ``$MLIPX_SERVE_BROKER``, arguments), so that a
    mistake is one line naming the value and ``source`` (an option or a variable), not
    a ZeroMQ error far away. A tcp host must resolve; a broker may also ``bind`` every
    interface (``*``), an interface by name, and port 0 or ``*`` (any free one).
    """
    shown = (f"{source} " if source.startswith("-") else f"{source}=" if source else "") + \
        repr(value)
    if "://" not in value and re.fullmatch(r"[\w.-]+:\d+", value):
        raise EndpointError(f"{shown} is not a broker endpoint: use tcp://{value} for a host "
                            f"and port (or ipc://PATH for a socket file)")
    value = normalise(value)
    scheme, _, address = value.partition("://")
    problem = _ipc_problem(address) if scheme == "ipc" else \
        _tcp_problem(address, bind) if scheme == "tcp" else \
        f"is not a broker endpoint: {ACCEPTED}"
    if problem:
        raise EndpointError(f"{shown} {problem}")
    return value


def _ipc_problem(path: str) -> str:
    if not path:
        return f"has no path: {ACCEPTED}"
    if len(path.encode()) > MAX_IPC_PATH:
        return (f"names a socket path of {len(path.encode())} bytes, more than the "
                f"{MAX_IPC_PATH} the system allows: use a shorter path")
    return ""


def _tcp_problem(address: str, bind: bool) -> str:
    host, colon, port = address.rpartition(":")
    if not colon or not host or "]" in port:  # (an IPv6 address without a port)
        return f"has no port: {ACCEPTED}"
    if not _port_ok(port, bind):
        return f"has no valid port ({port!r}, not a number from {int(not bind)} to 65535): " \
               f"{ACCEPTED}"
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "*":
        return "" if bind else "names every interface (*), where only a broker listens: " \
                               "give the broker's host, tcp://HOST:PORT"
    if bind and host in {name for _, name in socket.if_nameindex()}:
        return ""
    try:
        _resolve(host)
    except OSError as error:
        return f"names a host, {host!r}, that cannot be resolved ({error.strerror or error}): " \
               f"check the name, or give its IP address"
    return ""


def _port_ok(port: str, bind: bool) -> bool:
    if bind and port == "*":
        return True
    return port.isdigit() and (0 if bind else 1) <= int(port) <= 65535


@functools.lru_cache(maxsize=64)  # (only what resolved: a failure raises, and is not kept)
def _resolve(host: str) -> None:
    socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
