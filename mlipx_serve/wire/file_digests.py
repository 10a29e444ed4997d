"""The content of the files a model definition names, as digests: a checkpoint retrained
and written to the same path is another model (protocol/model-definition.md 1).

A file's digest is the SHA-256 of its bytes; a directory's, of the names and digests of
the files under it. Hashing a checkpoint of gigabytes takes seconds, so a process keeps
each file's digest for as long as its path, size and modification time stay the same.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PREFIX = "sha256:"
BLOCK = 1 << 20  # bytes read at a time
MAX_FILES = 10_000  # files under a directory that a digest reads; more is an error

_known: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest


def digests_of(kwargs: Mapping[str, Any]) -> dict[str, str]:
    """Path -> digest for every absolute path among ``kwargs``' strings (at any depth)
    that names a file or a directory; paths that name nothing are left out."""
    return {path: digest for path in sorted(set(_absolute_paths(kwargs)))
            if (digest := digest_of(path)) is not None}


def digest_of(path: str) -> str | None:
    """The digest of the file or directory at ``path``, None if there is none (or it
    cannot be read: the model's own loading will say why)."""
    try:
        if os.path.isdir(path):
            return _tree_digest(Path(path))
        return _file_digest(path) if os.path.isfile(path) else None
    except OSError:
        return None


def _file_digest(path: str) -> str:
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _known:
        hasher = hashlib.sha256()
        with open(path, "rb") as stream:
            while block := stream.read(BLOCK):
                hasher.update(block)
        _known[key] = PREFIX + hasher.hexdigest()
    return _known[key]


def _tree_digest(root: Path) -> str:
    files = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    if len(files) > MAX_FILES:
        raise OSError(f"{root} holds more than {MAX_FILES} files")
    hasher = hashlib.sha256()
    for name in files:
        hasher.update(f"{name}\0{_file_digest(str(root / name))}\n".encode())
    return PREFIX + hasher.hexdigest()


def _absolute_paths(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _absolute_paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _absolute_paths(item)
    elif isinstance(value, str) and os.path.isabs(value) and "\0" not in value:
        yield value
