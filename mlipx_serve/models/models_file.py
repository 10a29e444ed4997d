"""Model registries: the built-in models, overridden by ``models.py`` files written for
mlipx.

A registry maps a model name (the MDP service name) to an object with
``get_calculator()``. Files are read the way mlipx reads them: their ``ALL_MODELS``
mapping. The key is the name; an entry's own ``name`` attribute is only filled in when
it is unset, because some entries use ``name`` for something else (mlipx's
``OrbCalc.name`` is the orb-models loader, e.g. ``"orb_v2"``). Relative paths in an
entry's keyword arguments are made absolute against the file's directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlipx_serve import environment
from mlipx_serve.errors import DefinitionError, RegistryError, ServeError
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.models.definitions import (
    GenericASECalculator,
    PretrainedASECalculator,
    with_name,
)
from mlipx_serve.models.mlipx_shim import mlipx_names_available
from mlipx_serve.wire.definition import check_name, resolve_paths


def load_registry(models_files: Sequence[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """Built-in models overridden by each file in turn (later files win)."""
    if models_files is None:
        models_files = models_files_from_env()
    registry = dict(BUILTIN_MODELS)
    for path in models_files:
        registry.update(load_models_file(path))
    return registry


def models_files_from_env() -> list[str]:
    return environment.paths(environment.MODELS)


def load_models_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute a ``models.py`` and return its ``ALL_MODELS`` with names filled in."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise RegistryError(f"models file {str(file)!r} does not exist")
    namespace = _execute(file)
    if "ALL_MODELS" not in namespace:
        raise RegistryError(f"models file {str(file)!r} defines no ALL_MODELS mapping")
    models = namespace["ALL_MODELS"]
    if not isinstance(models, Mapping):
        raise RegistryError(
            f"models file {str(file)!r}: ALL_MODELS is a {type(models).__name__}, not a mapping"
        )
    return {key: _with_paths_from(file.parent, _checked_entry(file, key, entry))
            for key, entry in models.items()}


def _checked_entry(file: Path, key: Any, entry: Any) -> Any:
    try:
        check_name(key)
    except DefinitionError as error:
        raise RegistryError(f"models file {str(file)!r}: ALL_MODELS key: {error}") from None
    if not callable(getattr(entry, "get_calculator", None)):
        raise RegistryError(
            f"models file {str(file)!r}: ALL_MODELS[{key!r}] is a {type(entry).__name__} "
            "without a get_calculator() method"
        )
    return with_name(_adopt_mlipx_entry(entry), key)


def _with_paths_from(directory: Path, entry: Any) -> Any:
    """A definition whose relative paths (a checkpoint beside the models file) are made
    absolute against the file's directory, so that every process opens the same file,
    whatever its working directory (``definition.resolve_paths``)."""
    if not isinstance(entry, GenericASECalculator):
        return entry
    resolved = {"kwargs": resolve_paths(entry.kwargs or {}, directory)}
    if isinstance(entry, PretrainedASECalculator):
        resolved["calculator_kwargs"] = resolve_paths(entry.calculator_kwargs, directory)
    return dataclasses.replace(entry, **resolved)


_counter = itertools.count()
_load_lock = threading.RLock()  # a models file may load another


def _execute(file: Path) -> dict[str, Any]:
    """Run the file as a fresh module and hand back its globals.

    The module sits in ``sys.modules`` only while it runs (dataclasses look their
    module up there). Removing it afterwards makes cloudpickle ship the file's
    classes by value, so a worker process can rebuild an entry without the file.
    """
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:12]
    name = f"mlipx_serve._models_{digest}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise RegistryError(f"models file {str(file)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    with _load_lock, mlipx_names_available():
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise RegistryError(
                f"models file {str(file)!r} failed to run: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            sys.modules.pop(name, None)
    return vars(module)


def _adopt_mlipx_entry(entry: Any) -> Any:
    """Turn a real ``mlipx.GenericASECalculator`` into ours, field for field.

    With mlipx installed, a models file builds mlipx's class: without ``mlipx_glue.plugin``
    (``MLIPX_SERVE_HOOK=0``) it has neither ``name`` nor ``extra`` and cannot serve, and
    either way ours builds the calculator without torch for ``device="auto"``.
    """
    cls = type(entry)
    if cls.__name__ != "GenericASECalculator" or not cls.__module__.startswith("mlipx."):
        return entry
    return GenericASECalculator(
        module=entry.module,
        class_name=entry.class_name,
        kwargs=dict(entry.kwargs or {}),
        device=entry.device,
        spec=getattr(entry, "spec", None),
        name=getattr(entry, "name", None),
        extra=list(getattr(entry, "extra", None) or []),
        serving=getattr(entry, "serving", None),
    )




def find_model(name: str, registry: Mapping[str, object]) -> object:
    try:
        return registry[name]
    except KeyError:
        raise ServeError(f"unknown model '{name}'. Known models: {', '.join(sorted(registry))}. "
                         f"Add it to a models.py file (ALL_MODELS) and pass --models") from None
