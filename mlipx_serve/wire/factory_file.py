"""The factory file: a model defined in Python, handed to a worker process of this machine.

``serve_model`` pickles the function that builds the calculator with cloudpickle into a
file that only this user can read, in the private directory; the worker it starts
(``mlipx serve NAME --factory FILE``) reads it once and deletes it. Nothing that came over
a socket is ever unpickled.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cloudpickle
from ase.calculators.calculator import Calculator

from mlipx_serve.wire.private import private_dir, private_file

Factory = Callable[[], Calculator]


def write_factory(factory: Factory) -> Path:
    """The pickled factory in a new file that only this user can read."""
    folder = private_dir() / "factories"
    folder.mkdir(mode=0o700, exist_ok=True)
    return private_file(folder, _pickled(factory), suffix=".pkl")


def load_factory(path: str | os.PathLike) -> Factory:
    """Read a factory file once (then delete it), if it is this user's and private."""
    path = Path(path)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"refusing to unpickle {path}: a factory file must belong to "
                              f"you and be readable by you alone (mode 0600)")
    data = path.read_bytes()
    path.unlink(missing_ok=True)
    return cloudpickle.loads(data)


def _pickled(factory: Factory) -> bytes:
    """cloudpickle by value for the user's own code (a module outside this environment,
    such as a script or a test beside the data), by reference for installed packages."""
    module = sys.modules.get(getattr(factory, "__module__", None) or "")
    by_value = module is not None and module.__name__ != "__main__" and _users_own(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(factory)
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _users_own(module: ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    if not file:
        return False
    path = Path(file).resolve()
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return not any(path.is_relative_to(root) for root in installed)
