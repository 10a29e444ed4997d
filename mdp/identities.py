"""Routing identities: a peer's as text, and which client a connection belongs to
(protocol/mdp.md 6.1), both ways.

The broker serves the clients waiting for a service in turn, and a client is a process,
not a connection: the asyncio client opens one connection per request in flight, and a
script that kept 32 in flight would otherwise get 32 turns to another's one. So the
client libraries here give each connection the routing identity ``share:CLIENT/N``: the
same CLIENT for every connection of the process (``host:pid:nonce``), a different N for
each (a ROUTER takes no two connections with one identity). The broker reads CLIENT back;
any other identity is a client of its own, so plain MDP clients need to know nothing.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket

PREFIX = b"share:"
MAX_HOST = 64  # bytes of the host name an identity carries (a routing id holds 255)


class _ThisProcess:
    """This process's client name, and a count of its connections; new in a forked child."""

    def __init__(self) -> None:
        host = socket.gethostname().encode("utf-8", "replace")[:MAX_HOST]
        host = host.replace(b":", b"-").replace(b"/", b"-") or b"?"
        self.client = b"%s:%d:%s" % (host, os.getpid(), secrets.token_hex(4).encode())
        self.connections = itertools.count(1)


_this = _ThisProcess()
os.register_at_fork(after_in_child=lambda: globals().update(_this=_ThisProcess()))


def connection_identity() -> bytes:
    """A routing identity for a new connection of this process's client."""
    return b"%s%s/%d" % (PREFIX, _this.client, next(_this.connections))


def client_of(peer: bytes) -> bytes:
    """The client that a connection (a peer of the broker's core) belongs to: for a
    ``share:CLIENT/N`` identity, ``share:CLIENT``, the same for all its connections; for
    any other, the peer itself. The broker loop tags each peer with a leading control
    byte for its socket; the share is the same from either socket."""
    identity = peer[1:] if peer[:1] and peer[0] < 0x20 else peer
    if identity.startswith(PREFIX):
        cut = identity.rfind(b"/")
        if cut > len(PREFIX):
            return identity[:cut]
    return peer


def describe_client(client: bytes) -> dict:
    """What a person reads of a client (``client_of``'s result): its name, and its host
    and pid where its identity follows this library's ``host:pid:nonce``."""
    if not client.startswith(PREFIX):
        return {"client": peer_name(client), "host": None, "pid": None}
    name = client[len(PREFIX):].decode("utf-8", "replace")
    host, _, rest = name.partition(":")
    pid, _, nonce = rest.partition(":")
    known = pid.isdigit() and bool(nonce)
    return {"client": name, "host": host if known else None,
            "pid": int(pid) if known else None}


def peer_name(peer: bytes) -> str:
    """A peer's routing identity as text when it chose a printable one, else hex.

    A leading control byte is a socket tag added by the broker loop, not part of it.
    """
    identity = peer[1:] if peer[:1] and peer[0] < 0x20 else peer
    if not identity.isascii():  # libzmq's own identities, the usual case: no exception
        return peer.hex()
    text = identity.decode("ascii")
    return text if text.isprintable() else peer.hex()
