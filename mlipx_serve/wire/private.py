"""Where the processes of mlipx-serve keep what is theirs alone: directories only this user
can open, and files only this user can read, private from their first byte.

The private directory holds the default broker's sockets, the workers' logs and the
factory files of models defined in Python; the cluster directory, on the filesystem
the nodes of a cluster share, the connection files that carry keys.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from mlipx_serve import environment


def private_dir() -> Path:
    """``$XDG_RUNTIME_DIR/mlipx`` or ``<tmp>/mlipx-<uid>``, created with mode 0700.

    In a shared ``/tmp`` anyone can create that name first: a directory of someone
    else's, or a symbolic link (even to a directory of ours), is refused, not used.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "mlipx" if runtime else \
        Path(tempfile.gettempdir()) / f"mlipx-{os.getuid()}"
    return own_directory(base, f"set {environment.BROKER} or XDG_RUNTIME_DIR to a "
                                f"directory of your own")


def cluster_dir() -> Path:
    """``$MLIPX_SERVE_CLUSTER_DIR`` or ``~/.mlipx-serve``, created with mode 0700.

    Where a broker that starts workers on other machines keeps what they must read: the
    connection file and the workers' output. It must be on a filesystem those machines
    share with this one (the home directory is, on SLURM clusters; ``/tmp`` and
    ``$XDG_RUNTIME_DIR`` are not).
    """
    base = Path(environment.text(environment.CLUSTER_DIR) or Path.home() / ".mlipx-serve")
    return own_directory(base.absolute(), f"set {environment.CLUSTER_DIR} to a directory "
                                           f"of your own on the shared filesystem")


def own_directory(base: Path, fix: str) -> Path:
    """``base``, created with mode 0700 if need be, and refused unless it is a directory
    of this user's (not a symbolic link: in a shared ``/tmp`` anyone may make one)."""
    base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = base.lstat()
    problem = ("is a symbolic link" if stat.S_ISLNK(info.st_mode) else
               "is not a directory" if not stat.S_ISDIR(info.st_mode) else
               "belongs to another user" if info.st_uid != os.getuid() else None)
    if problem is not None:
        raise PermissionError(f"{base} {problem}, so it cannot be trusted as a private "
                              f"directory; remove it, or {fix}")
    base.chmod(0o700)
    return base


def private_file(directory: Path, data: bytes, name: str | None = None,
                 suffix: str = "") -> Path:
    """A new file in ``directory`` that only this user can read (``mkstemp``: mode 0600
    from the start), holding ``data``; under ``name`` when given, replacing a file of that
    name at once (readers see the old file or the new one, never half of one)."""
    fd, temporary = tempfile.mkstemp(prefix=".", suffix=suffix, dir=directory)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    if name is None:
        return Path(temporary)
    os.replace(temporary, directory / name)
    return directory / name


def open_to_others(endpoint: str) -> str:
    """Why another user of this machine could connect to the ipc ``endpoint``, or "" if
    none can: the socket file closed to others (a broker binds its own 0600), or a
    directory on its path that others cannot pass through. An abstract socket
    (``ipc://@name``) has no file and no permissions: anyone in the network namespace may
    connect."""
    path = endpoint.removeprefix("ipc://")
    if path.startswith("@"):
        return "it is an abstract socket, which any local user can connect to"
    try:
        if not os.stat(path).st_mode & 0o077:
            return ""
        for directory in Path(path).absolute().parents:
            if not os.stat(directory).st_mode & 0o011:
                return ""
    except OSError as error:
        return f"its permissions cannot be read ({error.strerror})"
    return "its socket file and every directory above it are open to other users"
