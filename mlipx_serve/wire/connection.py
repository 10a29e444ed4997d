"""The connection file: all a worker on another machine needs to reach its broker.

A broker that starts workers through SLURM writes it into the cluster directory (on the
filesystem the nodes share, mode 0600 in a 0700 directory): its tcp endpoint, its public
key, and the CURVE key pair its workers use, which it admits. ``mlipx serve NAME
--connect FILE`` reads it and needs nothing else. The broker removes the file when it
stops, and a worker whose file is gone, or names another broker, leaves.

The mdp Worker and Client take key files, so a worker writes the two keys into a fresh
private directory of its own node (``key_files``) for as long as it runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from mdp.client import Client
from mdp.errors import MDPError
from mlipx_serve.errors import ServeError

FORMAT = 1
PROBE_EVERY = 5.0  # seconds between a worker's questions to a broker on another machine


@dataclass(frozen=True)
class Connection:
    broker_id: str  # tells this broker's file from the next one's, and names its jobs
    endpoint: str  # tcp://host:port, as the nodes reach the broker's worker side
    server_key: str  # the broker's public key (Z85)
    public_key: str  # the workers' key pair (Z85), admitted by the broker
    secret_key: str

    def write(self, path: Path) -> None:
        """Write atomically, private from the first byte (the file holds a secret key)."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"format": FORMAT, **asdict(self)}, file, indent=1)
        os.replace(temporary, path)

    @classmethod
    def read(cls, path: Path) -> Connection:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ServeError(f"the connection file {path} does not exist: its broker has "
                             f"stopped, or it was never started. Start one with "
                             f"`mlipx serve-broker --autostart --launcher slurm`, which "
                             f"prints the file to give") from None
        except (OSError, ValueError) as error:
            raise ServeError(f"cannot read the connection file {path}: {error}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ServeError(f"{path} is not a connection file of this mlipx-serve (format "
                             f"{FORMAT}); give the file its broker printed")
        try:
            return cls(**{key: str(data[key]) for key in cls.__dataclass_fields__})
        except KeyError as missing:
            raise ServeError(f"the connection file {path} lacks {missing}") from None

    @contextmanager
    def key_files(self) -> Iterator[dict[str, str]]:
        """The ``curve_server_key``/``curve_secret_key`` files of an mdp Worker or Client,
        in a fresh directory only this user can open, removed afterwards."""
        folder = Path(tempfile.mkdtemp(prefix="mlipx-connect-"))
        try:
            server, pair = folder / "broker.key", folder / "worker.key_secret"
            _write_private(server, _certificate(public=self.server_key))
            _write_private(pair, _certificate(public=self.public_key, secret=self.secret_key))
            yield {"curve_server_key": str(server), "curve_secret_key": str(pair)}
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class BrokerWatch:
    """Why a worker started for a broker on another machine should leave, or None.

    Its connection file is gone or names another broker (the broker stopped), or the
    broker has not answered for ``orphan_timeout`` seconds (killed, or its machine gone):
    no process id to watch across machines, so it asks the broker itself, every few
    seconds, what any client may ask (``mmi.service``).
    """

    def __init__(self, path: Path, connection: Connection, keys: dict[str, str],
                 orphan_timeout: float):
        self.path = path
        self.connection = connection
        self.keys = keys
        self.orphan_timeout = orphan_timeout
        self.probe_every = min(PROBE_EVERY, orphan_timeout / 3)
        self._heard = self._next_probe = time.monotonic()

    def __call__(self) -> str | None:
        if not names_broker(self.path, self.connection.broker_id):
            return (f"the connection file {self.path} is gone or names another broker: "
                    f"broker {self.connection.broker_id} has stopped")
        now = time.monotonic()
        if now >= self._next_probe:
            if self._answers():
                self._heard = time.monotonic()
            self._next_probe = time.monotonic() + self.probe_every
        if now - self._heard > self.orphan_timeout:
            return (f"broker {self.connection.broker_id} at {self.connection.endpoint} has not "
                    f"answered for {now - self._heard:.0f} s (--orphan-timeout "
                    f"{self.orphan_timeout:g})")
        return None

    def _answers(self) -> bool:
        wait = max(0.5, self.probe_every)
        try:
            with Client(self.connection.endpoint, timeout=wait, broker_timeout=wait,
                        retries=0, **self.keys) as client:
                client.request("mmi.service", "mmi.status")
            return True
        except MDPError:
            return False


def names_broker(path: Path, broker_id: str) -> bool:
    """Does the file still stand for that broker? No when it is gone or was replaced."""
    try:
        return json.loads(Path(path).read_text()).get("broker_id") == broker_id
    except (OSError, ValueError, AttributeError):
        return False


def new_broker_id() -> str:
    """Unique per broker run; readable in job names (``mlipx-serve.ID.MODEL``)."""
    host = socket.gethostname().split(".")[0] or "broker"
    return f"{host}-{secrets.token_hex(3)}"


def _certificate(public: str, secret: str | None = None) -> str:
    """A key file as pyzmq and czmq write them (``zmq.auth.load_certificate`` reads it)."""
    lines = ["curve", f'    public-key = "{public}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"')
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
