"""Optional ZeroMQ CURVE security for the bus: keys, socket set-up, client admission.

A broker given a secret key makes every socket it binds a CURVE server: all traffic on
them is encrypted, and only peers that know the broker's public key can complete the
handshake. A ZAP authenticator on the broker's context then decides which peers may talk:
those whose public key it admits (``AdmittedKeys``: listed, read from a clients
directory, or added while it runs), or, with no list, any key at all (encryption without
client authentication).

Keys are Z85 text (40 characters), held in memory (``ServerCurve``, ``ClientCurve``) or
in key files, which are pyzmq/czmq certificates: ``NAME.key`` holds the public key and
may be shared; ``NAME.key_secret`` holds both keys and must stay private.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.z85 import Z85CHARS

from .errors import MDPError

log = logging.getLogger("mdp.security")

KeyPath = str | os.PathLike
Z85_KEY_LENGTH = 40  # a 32-byte Curve25519 key in Z85 text
Key = bytes | str  # a key in Z85 text
_Z85_BYTES = frozenset(Z85CHARS)
ZAP_RELEASE_WAIT = 1.0  # seconds a closed ZAP handler may take to free its endpoint


class CurveError(MDPError, RuntimeError):
    """CURVE cannot be set up: no CURVE in libzmq, or a key file or directory is unusable."""


def require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE; "
                         "encrypted endpoints need a libzmq with libsodium or tweetnacl")


def z85_key(key: Key) -> bytes:
    """``key`` as the Z85 bytes that sockets and the authenticator take; ValueError if it
    is not a key (the message never shows it: it may be a secret one)."""
    data = key.encode("ascii", "replace") if isinstance(key, str) else bytes(key)
    if len(data) != Z85_KEY_LENGTH or not set(data) <= _Z85_BYTES:
        raise ValueError(f"not a CURVE key: a key is {Z85_KEY_LENGTH} characters of Z85 text "
                         f"(this is {len(data)} characters long)")
    return data


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
    """The broker's key pair (Z85), applied to each socket it binds.

    ``ServerCurve(*zmq.curve_keypair())`` makes a broker with a new pair, kept in memory.
    """

    public_key: bytes
    secret_key: bytes

    def __post_init__(self) -> None:
        _set_keys(self, "public_key", "secret_key")
        if zmq.curve_public(self.secret_key) != self.public_key:
            raise ValueError("the broker's public key does not belong to its secret key")

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
    """What a client or worker socket needs: the broker's public key and a key pair (Z85).

    ``ClientCurve(server_key, *zmq.curve_keypair())`` uses a new pair, which a broker
    admits only if it admits any key (or is told this one with ``Broker.admit``).
    """

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    def __post_init__(self) -> None:
        _set_keys(self, "server_key", "public_key", "secret_key")

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


def _set_keys(curve: ServerCurve | ClientCurve, *fields: str) -> None:
    """Check the keys of a new ``curve`` and store them as bytes, whether they came as
    bytes or text (a frozen dataclass is set up this way, once)."""
    require_curve()
    for name in fields:
        object.__setattr__(curve, name, z85_key(getattr(curve, name)))


def server_curve(secret_key_file: KeyPath | None = None, *,
                 curve: ServerCurve | None = None) -> ServerCurve | None:
    """The broker's CURVE set-up: ``curve`` (keys in memory), or the key pair in
    ``secret_key_file``, or None for plain sockets."""
    if curve is not None:
        _not_both(secret_key_file)
        return curve
    return None if secret_key_file is None else ServerCurve.load(secret_key_file)


def client_curve(server_key_file: KeyPath | None = None,
                 secret_key_file: KeyPath | None = None, *,
                 curve: ClientCurve | None = None) -> ClientCurve | None:
    """The CURVE set-up of a client or worker: ``curve`` (keys in memory), or the one the
    key files give, or None for a plain connection."""
    if curve is not None:
        _not_both(server_key_file, secret_key_file)
        return curve
    if server_key_file is None:
        if secret_key_file is not None:
            raise ValueError("a CURVE secret key needs the broker's public key as well")
        return None
    return ClientCurve.load(server_key_file, secret_key_file)


def _not_both(*key_files: KeyPath | None) -> None:
    if any(path is not None for path in key_files):
        raise ValueError("give the CURVE keys either in memory (curve=) or as key files, "
                         "not both")


def read_clients_dir(directory: KeyPath) -> list[bytes]:
    """The public keys (Z85) in a directory of ``*.key`` files, which must be readable."""
    folder = Path(directory)
    try:
        keys = list(zmq.auth.load_certificates(folder))
    except (OSError, ValueError) as error:
        raise CurveError(f"cannot read the CURVE clients directory {folder}: {error}") from None
    if not keys:
        log.warning("no *.key file in %s: no client or worker will be admitted", folder)
    return keys


def check_clients_dir(directory: KeyPath) -> Path:
    """The directory of admitted public keys (``*.key``); it must exist and be readable."""
    read_clients_dir(directory)
    return Path(directory)


class AdmittedKeys:
    """The public keys of the clients and workers a CURVE broker admits.

    pyzmq's authenticator asks ``callback`` about each peer's key, in its own thread
    (``configure_curve_callback``); ``admit`` may add keys meanwhile, from any thread.
    """

    def __init__(self, keys: Iterable[Key] = ()):
        self._keys = frozenset(z85_key(key) for key in keys)
        self._adding = threading.Lock()

    @classmethod
    def of(cls, clients: KeyPath | Iterable[Key]) -> AdmittedKeys:
        """The keys of ``clients``: a directory of ``*.key`` files, or the keys themselves."""
        if isinstance(clients, (str, os.PathLike)):
            return cls(read_clients_dir(clients))
        if isinstance(clients, (bytes, bytearray)):
            raise TypeError("give the admitted keys as a list, even a single one")
        return cls(clients)

    def admit(self, key: Key) -> None:
        key = z85_key(key)
        # A new set replaces the old one, so the authenticator's thread, which reads
        # without the lock, always sees a whole set.
        with self._adding:
            self._keys = self._keys | {key}

    def __contains__(self, key: Key) -> bool:
        return z85_key(key) in self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether to admit the peer with ``key`` (Z85); every ZAP domain is the same."""
        return key in self._keys


def start_authenticator(context: zmq.Context,
                        clients: AdmittedKeys | KeyPath | None = None) -> ThreadAuthenticator:
    """A ZAP handler on ``context`` admitting the keys in ``clients`` (``AdmittedKeys`` or a
    directory of ``*.key`` files), or any key.

    Start it before the CURVE sockets bind: libzmq admits every peer while no ZAP handler
    listens. One context holds one handler, so two CURVE brokers need two contexts.
    """
    require_curve()
    if clients is not None and not isinstance(clients, AdmittedKeys):
        clients = AdmittedKeys.of(clients)
    deadline = time.monotonic() + ZAP_RELEASE_WAIT
    while True:
        auth = ThreadAuthenticator(context, log=logging.getLogger("mdp.auth"))
        if clients is None:
            auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        else:
            auth.configure_curve_callback(domain="*", credentials_provider=clients)
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
