"""Optional ZeroMQ CURVE security for the bus: key files, socket set-up, client admission.

A broker given a secret key makes every socket it binds a CURVE server: all traffic on
them is encrypted, and only peers that know the broker's public key can complete the
handshake. A ZAP authenticator on the broker's context then decides which peers may talk:
those whose public key is in a clients directory, or, with no directory, any key at all
(encryption without client authentication).

Key files are pyzmq/czmq certificates: ``NAME.key`` holds the public key and may be
shared; ``NAME.key_secret`` holds both keys and must stay private.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import MDPError

log = logging.getLogger("mdp.security")

KeyPath = str | os.PathLike
Z85_KEY_LENGTH = 40  # a 32-byte Curve25519 key in Z85 text
ZAP_RELEASE_WAIT = 1.0  # seconds a closed ZAP handler may take to free its endpoint


class CurveError(MDPError, RuntimeError):
    """CURVE cannot be set up: no CURVE in libzmq, or a key file or directory is unusable."""


def require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE; "
                         "encrypted endpoints need a libzmq with libsodium or tweetnacl")


def create_key_pair(directory: KeyPath, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) into ``directory``.

    Existing files are never overwritten. Returns (public file, secret file).
    """
    require_curve()
    if not name or Path(name).name != name:
        raise CurveError(f"a key name must be a plain file name, not {name!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise CurveError(f"{path} exists already; it was left as it is")
    # The secret file is created private before any key is written into it.
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    zmq.auth.create_certificates(folder, name)
    return public, secret


def load_key_file(path: KeyPath, secret: bool = False) -> tuple[bytes, bytes | None]:
    """(public key, secret key or None) from a key file; ``secret`` demands the secret key."""
    require_curve()
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise CurveError(f"cannot read the CURVE key file {path}: {error}") from None
    if secret and secret_key is None:
        raise CurveError(f"{path} holds no secret key; give the NAME.key_secret file")
    for key in (public_key, secret_key):
        if key is not None and len(key) != Z85_KEY_LENGTH:
            raise CurveError(f"{path} holds a malformed key (not {Z85_KEY_LENGTH} Z85 chars)")
    return public_key, secret_key


@dataclass(frozen=True)
class ServerCurve:
    """The broker's key pair, applied to each socket it binds."""

    public_key: bytes
    secret_key: bytes

    @classmethod
    def load(cls, secret_key_file: KeyPath) -> ServerCurve:
        public_key, secret_key = load_key_file(secret_key_file, secret=True)
        return cls(public_key, secret_key)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server; call before it binds."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


@dataclass(frozen=True)
class ClientCurve:
    """What a client or worker socket needs: the broker's public key and a key pair."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def load(cls, server_key_file: KeyPath, secret_key_file: KeyPath | None = None
             ) -> ClientCurve:
        """Without ``secret_key_file`` the pair is ephemeral: fine for a broker that
        admits any key, refused by one that admits only listed clients."""
        server_key, _ = load_key_file(server_key_file)
        if secret_key_file is None:
            public_key, secret_key = zmq.curve_keypair()
        else:
            public_key, secret_key = load_key_file(secret_key_file, secret=True)
        return cls(server_key, public_key, secret_key)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the broker; call before it connects."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


def server_curve(secret_key_file: KeyPath | None) -> ServerCurve | None:
    return None if secret_key_file is None else ServerCurve.load(secret_key_file)


def client_curve(server_key_file: KeyPath | None,
                 secret_key_file: KeyPath | None = None) -> ClientCurve | None:
    """The CURVE set-up of a client or worker, or None for a plain connection."""
    if server_key_file is None:
        if secret_key_file is not None:
            raise ValueError("a CURVE secret key needs the broker's public key as well")
        return None
    return ClientCurve.load(server_key_file, secret_key_file)


def check_clients_dir(directory: KeyPath) -> Path:
    """The directory of admitted public keys (``*.key``); it must exist and be readable."""
    folder = Path(directory)
    try:
        keys = zmq.auth.load_certificates(folder)
    except (OSError, ValueError) as error:
        raise CurveError(f"cannot read the CURVE clients directory {folder}: {error}") from None
    if not keys:
        log.warning("no *.key file in %s: no client or worker will be admitted", folder)
    return folder


def start_authenticator(context: zmq.Context,
                        clients_dir: KeyPath | None = None) -> ThreadAuthenticator:
    """A ZAP handler on ``context`` admitting the keys in ``clients_dir``, or any key.

    Start it before the CURVE sockets bind: libzmq admits every peer while no ZAP handler
    listens. One context holds one handler, so two CURVE brokers need two contexts.
    """
    require_curve()
    location = zmq.auth.CURVE_ALLOW_ANY if clients_dir is None else \
        str(check_clients_dir(clients_dir))
    deadline = time.monotonic() + ZAP_RELEASE_WAIT
    while True:
        auth = ThreadAuthenticator(context, log=logging.getLogger("mdp.auth"))
        auth.configure_curve(domain="*", location=location)
        try:
            auth.start()
            return auth
        except zmq.ZMQError as error:
            auth.stop()
            if error.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise CurveError(f"cannot start the ZAP authenticator ({error}); is another "
                                 "one running on this context? Give the broker a context of "
                                 "its own") from None
        time.sleep(0.005)  # a handler stopped just now frees its endpoint a moment later
