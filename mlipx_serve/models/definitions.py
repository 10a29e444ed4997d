"""Model definitions: what a model is, and how its ASE calculator is built in this process.

`GenericASECalculator` keeps the fields mlipx users already write in their
``models.py`` files, so those files work unchanged. On top of that it knows the
model's service name, the extras that provide it (so that a missing dependency says how
to install it) and how it asks to be served. The public ``mlipx_serve.GenericASECalculator``
(``client/servable.py``) is this class with a ``get_calculator()`` that prefers the served
model; the catalogue, models files and workers need only this one.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import logging
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator

from mlipx_serve.errors import DefinitionError, ModelUnavailableError
from mlipx_serve.models.extras import EXTRAS, model_extras
from mlipx_serve.wire.definition import Definition, check_name
from mlipx_serve.wire.serving import ServingSettings

logger = logging.getLogger(__name__)



class Device:
    """Device names as mlipx spells them (``mlipx.nodes.generic_ase.Device``).

    A plain class with string constants, like mlipx's, so models files that compare
    ``self.device == Device.AUTO`` or call ``Device.resolve_auto()`` run unchanged.
    """

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    @staticmethod
    def resolve_auto() -> str:
        """Unlike mlipx's, answers "cpu" without torch instead of raising."""
        return resolve_device(Device.AUTO) or Device.CPU


def resolve_device(device: str | None) -> str | None:
    """Turn "auto" into a concrete device; torch is imported only for "auto".

    Other values ("cpu", "cuda", "cuda:1", "mps", ...) pass through, and None stays
    None so that calculators with their own device logic are left alone.
    """
    if device != Device.AUTO:
        return device
    try:
        import torch
    except ImportError:
        logger.debug("device 'auto' resolved to 'cpu': torch is not importable")
        return Device.CPU
    return Device.CUDA if torch.cuda.is_available() else Device.CPU


def _split_target(target: str) -> tuple[str, str]:
    """Split "package.module:Attribute", the one-string form used for wrappers."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'module:Attribute', got {target!r}")
    return module, attr


class Definable:
    """A model definition: what the model is (``definition()``, for the fingerprint a
    worker checks) and how it is built in this process (``build_local_calculator``).

    ``get_calculator`` builds it here, as mlipx's does; serving it is the client's
    business (``client/servable.py`` adds a ``get_calculator`` that prefers the served
    model, and ``mlipx_glue`` adds it to mlipx's own class).
    """

    name: str | None

    def get_calculator(self, use_serve: bool | None = None, **kwargs: Any) -> Calculator:
        """The calculator built here (``use_serve`` is refused: see the class)."""
        if use_serve:
            raise DefinitionError(
                f"model {self.label()!r}: this definition ({type(self).__module__}) is built "
                "where it runs; for the served model, define it with "
                "mlipx_serve.GenericASECalculator, or ask by name with mlipx_serve.Models()")
        return self.build_local_calculator(**kwargs)

    def build_local_calculator(self, **kwargs: Any) -> Calculator:
        raise NotImplementedError

    def definition(self, **kwargs: Any) -> Definition:
        """What this model is, called with ``kwargs``; a ``DefinitionError`` when that has
        no canonical form."""
        raise NotImplementedError

    def label(self) -> str:
        return self.name or f"{getattr(self, 'module', '?')}:{getattr(self, 'class_name', '?')}"

    def _builds_like(self, defined: type) -> None:
        """A subclass that builds its calculator its own way is not what its fields
        define: a worker rebuilding it from them would compute another model. ``defined``
        or a class of ours derived from it (``BUILDS_FROM_FIELDS`` in its own body) sets
        the methods to have."""
        ours = next(cls for cls in type(self).__mro__
                    if cls is defined or (issubclass(cls, defined)
                                          and cls.__dict__.get("BUILDS_FROM_FIELDS")))
        for method in ("get_calculator", "build_local_calculator", "_construct"):
            if getattr(type(self), method, None) is not getattr(ours, method, None):
                raise DefinitionError(
                    f"{type(self).__name__} builds its calculator its own way (it has a "
                    f"{method} of its own), so its fields do not say what model it is; "
                    f"serve it by name from a models file on the broker")


@dataclasses.dataclass
class GenericASECalculator(Definable):
    """Any ASE calculator given by module and class (or factory function) name.

    Field names and meanings follow ``mlipx.GenericASECalculator``. Added: ``name``
    (the MDP service name; a registry fills it in from the ``ALL_MODELS`` key) and
    ``extra`` (the optional-dependency groups that install ``module``), and ``serving``
    (how the model is served: batching, workers, GPUs, idle timeout; a dict of
    ``ServingSettings``' fields, not part of what the model is).
    """

    module: str
    class_name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str | None = None
    spec: str | None = None
    name: str | None = None
    extra: list[str] = dataclasses.field(default_factory=list)
    serving: dict[str, Any] | None = None  # how it is served (wire/serving.py), plain data

    def __post_init__(self) -> None:
        serving_settings(self)  # unknown or malformed settings: an error here, at once
        if self.name is not None:
            check_name(self.name)

    def build_local_calculator(self, **kwargs: Any) -> Calculator:
        """Build the calculator in this process; a served worker calls this too.

        Precedence: ``self.kwargs`` < ``self.device`` < call-time kwargs. mlipx lets
        ``self.kwargs`` win over call-time ones; we let the caller win, which is what
        an explicit argument is expected to do. ``spec`` is metadata only (see
        ``get_spec``), never a calculator argument, as in mlipx.
        """
        factory = self._import_attr(self.module, self.class_name)
        return self._construct(factory, self._merged_kwargs(kwargs))

    def _merged_kwargs(self, call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(self.kwargs or {})
        device = resolve_device(self.device)
        if device is not None:
            merged["device"] = device
        merged.update(call_kwargs)
        return merged

    def definition(self, **kwargs: Any) -> Definition:
        """Module, class and keyword arguments, merged as ``build_local_calculator`` merges
        them; the device, from wherever it comes, is not part of what the model is."""
        self._builds_like(GenericASECalculator)
        arguments, running = self._split(kwargs)
        return Definition.generic(self.module, self.class_name, arguments, **running)

    def _split(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the keyword arguments without the device, the fields that say how it runs)."""
        arguments = {**(self.kwargs or {}), **kwargs}
        device = arguments.pop("device", None)
        if "device" not in kwargs and self.device is not None:
            device = self.device
        return arguments, {"name": self.name, "device": device,
                           "extra": tuple(model_extras(self)),
                           "serving": serving_settings(self).to_json()}

    def _construct(self, factory: Callable[..., Any], kwargs: dict[str, Any]) -> Calculator:
        """One step for plain calculators; subclasses wrap a loaded model here."""
        return factory(**kwargs)

    def _import_attr(self, module_name: str, attr: str) -> Any:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise self._unavailable(module_name, exc) from exc
        try:
            return getattr(module, attr)
        except AttributeError:
            raise AttributeError(
                f"model {self.name!r}: module {module_name!r} has no {attr!r}; the installed "
                "version may be too old or too new for this model definition"
            ) from None

    def _unavailable(self, module_name: str, exc: ImportError) -> ModelUnavailableError:
        extras = model_extras(self)
        message = unavailable_message(self.name, module_name, extras, exc)
        return ModelUnavailableError(message, module=module_name, extras=extras, model=self.name)

    @property
    def available(self) -> bool:
        """Whether ``module`` imports here; mirrors mlipx's property of the same name."""
        try:
            importlib.import_module(self.module)
        except ImportError:
            return False
        return True

    def get_spec(self) -> dict[str, Any] | None:
        """Metadata for ``spec`` from ``mlips.yaml``, looked up where mlipx looks.

        mlipx reads ``<top-level package>/spec/mlips.yaml`` and then its own copy.
        It returns a pydantic model; we return the plain mapping (no pydantic here).
        """
        if self.spec is None:
            return None
        for path in _spec_files(self.module):
            entry = _read_spec_entry(path, self.spec)
            if entry is not None:
                return entry
        return None



@dataclasses.dataclass
class PretrainedASECalculator(GenericASECalculator):
    """A model loaded by one call and wrapped by an ASE calculator class.

    orb-models, matgl and fairchem split "load the network" from "make a
    calculator"; this keeps them declarative like the rest instead of needing a
    hand-written class per model. ``module``/``class_name`` name the loader (it gets
    ``kwargs`` and the device); ``calculator`` ("module:Class") gets the loaded
    model, ``calculator_kwargs``, and the device when ``calculator_takes_device``.
    """

    calculator: str = ""
    calculator_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    calculator_takes_device: bool = False

    def definition(self, **kwargs: Any) -> Definition:
        self._builds_like(PretrainedASECalculator)
        arguments, running = self._split(kwargs)
        return Definition.wrapped(self.module, self.class_name, arguments, self.calculator,
                                  self.calculator_kwargs, self.calculator_takes_device,
                                  **running)

    def _construct(self, factory: Callable[..., Any], kwargs: dict[str, Any]) -> Calculator:
        wrapper = self._import_attr(*_split_target(self.calculator))
        wrapper_kwargs = dict(self.calculator_kwargs)
        if self.calculator_takes_device and "device" in kwargs:
            wrapper_kwargs["device"] = kwargs["device"]
        return wrapper(factory(**kwargs), **wrapper_kwargs)


def model_from(definition: Definition) -> GenericASECalculator:
    """The model a definition describes, as a worker builds it."""
    identity = definition.identity
    common = {"module": identity["module"], "class_name": identity["class_name"],
              "kwargs": dict(identity["kwargs"]), "device": definition.device,
              "name": definition.name, "extra": list(definition.extra),
              "serving": dict(definition.serving or {})}
    if not definition.is_wrapped:
        return GenericASECalculator(**common)
    return PretrainedASECalculator(
        **common, calculator=identity["calculator"],
        calculator_kwargs=dict(identity["calculator_kwargs"]),
        calculator_takes_device=identity["calculator_takes_device"])


def with_name(entry: Any, key: str) -> Any:
    """Return the entry with ``name`` set to its key when unset.

    A copy is named, never the original: one object may sit under two keys.
    Frozen dataclasses go through ``dataclasses.replace``; objects that refuse a
    ``name`` (slots, read-only properties) are returned as they are.
    """
    try:
        if getattr(entry, "name", None) is not None:
            return entry
    except Exception:  # a property that raises: not ours to touch
        return entry
    if _has_init_field(entry, "name"):
        try:
            return dataclasses.replace(entry, name=key)
        except (TypeError, ValueError):
            pass
    return _copy_with_name(entry, key)


def _has_init_field(entry: Any, field: str) -> bool:
    if not dataclasses.is_dataclass(entry) or isinstance(entry, type):
        return False
    return any(f.name == field and f.init for f in dataclasses.fields(entry))


def _copy_with_name(entry: Any, key: str) -> Any:
    try:
        named = copy.copy(entry)
        object.__setattr__(named, "name", key)
    except (AttributeError, TypeError, copy.Error):
        logger.debug("cannot set name %r on %s; leaving it unnamed", key, type(entry).__name__)
        return entry
    return named


def serving_settings(model: object) -> ServingSettings:
    """How ``model`` asks to be served (its ``serving``, checked); none of it set for a
    model that says nothing."""
    return ServingSettings.of(getattr(model, "serving", None))


def definition_of(model: object) -> Definition | None:
    """What a model is, for the check of every request a worker gets; None for one
    without a definition (a Python function, a models file entry of a class of its own)."""
    define = getattr(model, "definition", None)
    if define is None:
        return None
    try:
        return define()
    except DefinitionError as error:
        logger.warning("model has no definition to check requests against (%s); it takes "
                       "only requests by name alone", error)
        return None


@dataclasses.dataclass
class FactoryModel:
    """A model whose calculator a Python function builds (``serve_model``): served by
    name alone, as it has no definition another process could rebuild."""

    factory: Callable[[], Calculator]
    name: str | None = None

    def build_local_calculator(self) -> Calculator:
        return self.factory()


def unavailable_message(model: str | None, module: str, extras: list[str], exc: ImportError) -> str:
    """The fix belongs in the message: users meet it far from any documentation."""
    who = f"model {model!r}" if model else "this model"
    head = f"{who} needs the Python module {module!r}, which cannot be imported ({exc})."
    if not extras:
        return f"{head} Install the package that provides {module!r} into this environment."
    return f"{head} {_install_hint(model, extras)}"


def _install_hint(model: str | None, extras: list[str]) -> str:
    spec = ",".join(extras)
    requirements = [req for extra in extras for req in EXTRAS.get(extra, [])]
    hint = f"It is provided by the extra {spec!r}: run `uv pip install 'mlipx-serve[{spec}]'`"
    if requirements:
        hint += f" (or `pip install {' '.join(map(shlex.quote, requirements))}`)"
    if model:
        hint += f", or run `mlipx serve {model}`, which installs it with uv automatically"
    return hint + "."


def _spec_files(module: str) -> list[Path]:
    """Candidate mlips.yaml files: the model's package first, then mlipx's."""
    paths = []
    for package in (module.split(".")[0], "mlipx"):
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (found.submodule_search_locations or []) if found else []:
            paths.append(Path(location) / "spec" / "mlips.yaml")
    return paths


def _read_spec_entry(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        import yaml
    except ImportError:
        logger.info("cannot read %s: PyYAML is not installed", path)
        return None
    entry = (yaml.safe_load(path.read_text()) or {}).get(key)
    return entry if isinstance(entry, dict) else None
