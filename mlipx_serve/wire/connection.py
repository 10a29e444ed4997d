"""The connection file: all a worker on another machine needs to reach its broker.

A broker that starts workers through SLURM writes it into the cluster directory (on the
filesystem the nodes share, mode 0600 in a 0700 directory): its tcp endpoint, its public
key, and the CURVE key pair its workers use, which it admits. ``mlipx serve NAME
--connect FILE`` reads it and needs nothing else; the keys go from the file to the
sockets in memory. The broker removes the file when it stops, and a worker whose file is
gone, or names another broker, leaves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlipx_serve.errors import ServeError
from mlipx_serve.wire.private import private_file

FORMAT = 1


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
        text = json.dumps({"format": FORMAT, **asdict(self)}, indent=1)
        private_file(path.parent, text.encode(), name=path.name)

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

    def keys(self) -> tuple[bytes, bytes, bytes]:
        """(the broker's public key, the workers' public key, their secret key), Z85."""
        return self.server_key.encode(), self.public_key.encode(), self.secret_key.encode()


def names_broker(path: Path, broker_id: str) -> bool:
    """Does the file still stand for that broker? No when it is gone or was replaced."""
    try:
        return json.loads(Path(path).read_text()).get("broker_id") == broker_id
    except (OSError, ValueError, AttributeError):
        return False
