"""What a served model is: its definition, in one canonical form that every process computes
alike (protocol/model-definition.md).

A model is defined by the code that builds its calculator: a module, a class or factory in
it, and keyword arguments; a loaded network wrapped by a calculator class adds that class
and its arguments; the files its arguments name count by their content. Two definitions
are the same model when their canonical JSON is the same byte for byte, and the SHA-256 of
that text is the model's fingerprint: what a worker compares with every request before it
computes. Name, extras and device are not part of it: they say what a model is called and
where it runs, not what it computes.

Pure data: no sockets, no imports of the model's packages.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from mlipx_serve.errors import DefinitionError, SettingsError
from mlipx_serve.wire.file_digests import PREFIX as DIGEST_PREFIX
from mlipx_serve.wire.file_digests import digest_of, digests_of
from mlipx_serve.wire.serving import ServingSettings

GENERIC_FIELDS = ("module", "class_name", "kwargs")
WRAPPER_FIELDS = ("calculator", "calculator_kwargs", "calculator_takes_device")
FILES_FIELD = "files"  # path -> digest of the files the arguments name, when they name any
_DIGEST = re.compile(rf"{DIGEST_PREFIX}[0-9a-f]{{64}}")
SHORT_FINGERPRINT = 8  # hex digits in service names such as my-lj@3f9a2c1e
MAX_NAME = 200  # bytes of a model's name, in UTF-8 (an MDP service name holds 255)
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_TARGET = re.compile(rf"{_DOTTED.pattern}:[A-Za-z_][A-Za-z0-9_]*")
_PATH_PREFIXES = ("./", "../", "~/")


@dataclass(frozen=True, eq=False)
class Definition:
    """A model's identity (``identity``: the canonical fields) and what else a worker needs
    to run it (``name``, ``device``, ``extra``, ``serving``), which is not part of the
    identity."""

    identity: Mapping[str, Any]
    name: str | None = None
    device: str | None = None
    extra: tuple[str, ...] = ()
    serving: Mapping[str, Any] | None = None  # how it is served (wire/serving.py), as JSON
    canonical: str = field(init=False, repr=False)
    fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name(self.name)
        identity = _checked_identity(self.identity)
        canonical = canonical_json(identity)
        object.__setattr__(self, "identity", json.loads(canonical))
        object.__setattr__(self, "canonical", canonical)
        object.__setattr__(self, "fingerprint", fingerprint_of(canonical))
        object.__setattr__(self, "extra", tuple(self.extra or ()))

    @classmethod
    def generic(cls, module: str, class_name: str, kwargs: Mapping[str, Any] | None, *,
                base: Path | None = None, **rest: Any) -> Definition:
        """A calculator (or factory) ``module.class_name(**kwargs)``; relative paths in
        ``kwargs`` are resolved against ``base`` (default: the working directory), and
        the files they name count by their content."""
        identity = {"module": module, "class_name": class_name,
                    "kwargs": resolve_paths(dict(kwargs or {}), base)}
        return cls(_with_files(identity), **rest)

    @classmethod
    def wrapped(cls, module: str, class_name: str, kwargs: Mapping[str, Any] | None,
                calculator: str, calculator_kwargs: Mapping[str, Any] | None,
                calculator_takes_device: bool, *, base: Path | None = None,
                **rest: Any) -> Definition:
        """A network loaded by ``module.class_name(**kwargs)`` and wrapped by the calculator
        class ``calculator`` ("module:Class") with ``calculator_kwargs``."""
        identity = {"module": module, "class_name": class_name,
                    "kwargs": resolve_paths(dict(kwargs or {}), base),
                    "calculator": calculator,
                    "calculator_kwargs": resolve_paths(dict(calculator_kwargs or {}), base),
                    "calculator_takes_device": bool(calculator_takes_device)}
        return cls(_with_files(identity), **rest)

    @property
    def is_wrapped(self) -> bool:
        return "calculator" in self.identity

    def changed_files(self) -> list[str]:
        """The files it names whose content is no longer what it was defined with."""
        return [path for path, digest in self.identity.get(FILES_FIELD, {}).items()
                if digest_of(path) != digest]

    def label(self) -> str:
        """The name, else the class or factory: what a service of its own is named after
        (at most ``MAX_NAME`` bytes, a character never cut in two)."""
        label = (self.name or self.identity["class_name"]).encode()[:MAX_NAME]
        return label.decode("utf-8", "ignore")

    def own_service(self) -> str:
        """The service of this definition alone: ``my-lj@3f9a2c1e``, ``LennardJones@...``."""
        return f"{self.label()}@{self.fingerprint[:SHORT_FINGERPRINT]}"

    def services_to_try(self, offered: Iterable[str]) -> list[str]:
        """The ``offered`` services that may serve this definition, and its own, in the
        order to prefer them: its name, its own service, then the others by name."""
        preferred = (self.name, self.own_service(), *sorted(offered))
        return list(dict.fromkeys(name for name in preferred if name))

    def short(self) -> str:
        """One line for people: ``ase.calculators.lj:LennardJones sigma=2.3``."""
        return short_text(self.identity)

    def to_json(self) -> dict[str, Any]:
        """What travels to a broker that starts a worker for it (``from_json`` reads it)."""
        return {"identity": dict(self.identity), "name": self.name, "device": self.device,
                "extra": list(self.extra), "serving": dict(self.serving or {})}

    @classmethod
    def from_json(cls, data: Any) -> Definition:
        """A definition another process sent; anything malformed is a ``DefinitionError``.
        Paths stay as they were sent: the sender resolved them (protocol)."""
        if not isinstance(data, Mapping):
            raise DefinitionError("a model definition must be a JSON object")
        unknown = set(data) - {"identity", "name", "device", "extra", "serving"}
        if unknown:
            raise DefinitionError(f"unknown keys in a model definition: {sorted(unknown)}")
        name, device, extra = data.get("name"), data.get("device"), data.get("extra") or []
        if not (name is None or isinstance(name, str) and name):
            raise DefinitionError("a model definition's 'name' must be a non-empty string")
        if not (device is None or isinstance(device, str)):
            raise DefinitionError("a model definition's 'device' must be a string")
        if not (isinstance(extra, list) and all(isinstance(e, str) for e in extra)):
            raise DefinitionError("a model definition's 'extra' must be a list of strings")
        serving = data.get("serving") or {}
        try:
            ServingSettings.of(serving)
        except SettingsError as error:
            raise DefinitionError(f"a model definition's serving settings: {error}") from None
        return cls(data.get("identity"), name=name, device=device, extra=tuple(extra),
                   serving=serving)


def check_name(name: Any) -> str:
    """``name`` if it can name a served model, else a ``DefinitionError`` saying why: an
    MDP service name of at most ``MAX_NAME`` bytes, not one of the broker's own (``mmi.``),
    not one a command line takes for an option (``-``), nothing unprintable."""
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"a model's name must be a non-empty string, not {name!r}")
    problem = ("starts with 'mmi.', which the broker keeps for its own services"
               if name.startswith("mmi.") else
               "starts with '-', which a command line takes for an option"
               if name.startswith("-") else
               "holds a character that is not printable" if not name.isprintable() else
               f"is {len(name.encode())} bytes long in UTF-8 (at most {MAX_NAME})"
               if len(name.encode()) > MAX_NAME else "")
    if problem:
        raise DefinitionError(f"the model name {name[:60]!r} {problem}; choose another")
    return name


def canonical_json(value: Any) -> str:
    """The one text of ``value``: keys sorted, no spaces, UTF-8 as is, floats as the
    shortest text that reads back to the same double (protocol/model-definition.md 2)."""
    return json.dumps(_plain(value, ""), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def fingerprint_of(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data, or a ``DefinitionError`` naming what cannot be."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DefinitionError(f"{where} is {value}, which JSON cannot hold")
        return float(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise DefinitionError(f"{where} has keys that are not strings")
        return {key: _plain(item, f"{where}.{key}" if where else key)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain(item(), where)
    raise DefinitionError(f"{where} is of type {type(value).__name__}, which cannot travel to "
                          f"a worker as JSON; give plain values (numbers, strings, lists, "
                          f"dicts)")


def _with_files(identity: dict[str, Any]) -> dict[str, Any]:
    files = digests_of({key: identity[key] for key in ("kwargs", "calculator_kwargs")
                        if key in identity})
    return {**identity, FILES_FIELD: files} if files else identity


def _checked_identity(identity: Any) -> dict[str, Any]:
    if not isinstance(identity, Mapping):
        raise DefinitionError("a model's identity must be a JSON object")
    keys = set(identity) - {FILES_FIELD}
    if keys not in (set(GENERIC_FIELDS), set(GENERIC_FIELDS + WRAPPER_FIELDS)):
        raise DefinitionError(f"a model's identity has the keys {list(GENERIC_FIELDS)}, "
                              f"plus {list(WRAPPER_FIELDS)} for a wrapped network, and "
                              f"'{FILES_FIELD}' where its arguments name files; not "
                              f"{sorted(set(identity))}")
    files = identity.get(FILES_FIELD, {})
    if not (isinstance(files, Mapping) and files and all(
            isinstance(path, str) and os.path.isabs(path) and isinstance(digest, str)
            and _DIGEST.fullmatch(digest) for path, digest in files.items())):
        if FILES_FIELD in identity:
            raise DefinitionError(f"'{FILES_FIELD}' must map absolute paths to "
                                  f"'{DIGEST_PREFIX}' and 64 hex digits")
    if not (isinstance(identity["module"], str) and _DOTTED.fullmatch(identity["module"])):
        raise DefinitionError(f"'module' must be a dotted module name, not "
                              f"{identity['module']!r}")
    if not (isinstance(identity["class_name"], str) and
            identity["class_name"].isidentifier()):
        raise DefinitionError(f"'class_name' must be a Python name, not "
                              f"{identity['class_name']!r}")
    for key in ("kwargs", "calculator_kwargs"):
        if key in identity and not isinstance(identity[key], Mapping):
            raise DefinitionError(f"'{key}' must be an object of keyword arguments")
    if "calculator" in keys:
        if not (isinstance(identity["calculator"], str) and
                _TARGET.fullmatch(identity["calculator"])):
            raise DefinitionError(f"'calculator' must read 'package.module:Class', not "
                                  f"{identity['calculator']!r}")
        if not isinstance(identity["calculator_takes_device"], bool):
            raise DefinitionError("'calculator_takes_device' must be true or false")
    return dict(identity)


# ------------------------------------------------------------ relative paths


def resolve_paths(value: Any, base: Path | None = None) -> Any:
    """``value`` with each explicit relative path made absolute against ``base``
    (default: the working directory), so that a worker started elsewhere opens the same
    file: a ``pathlib`` path, or a string that starts with ``./``, ``../`` or ``~/``.
    Any other string is left as it is, whatever the working directory holds: a word such
    as ``medium`` is an argument, not the folder ``medium/`` that may lie beside it."""
    if isinstance(value, Mapping):
        return {key: resolve_paths(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_paths(item, base) for item in value)
    if isinstance(value, PurePath):
        return str(_absolute(str(value), base))
    if isinstance(value, str) and (value.startswith(_PATH_PREFIXES) or
                                   value in (".", "..", "~")):
        return str(_absolute(value, base))
    return value


def _absolute(text: str, base: Path | None) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (Path(base or Path.cwd()) / path).resolve()


# ------------------------------------------------------------ for people


def short_text(identity: Mapping[str, Any]) -> str:
    text = f"{identity['module']}:{identity['class_name']}{_arguments(identity['kwargs'])}"
    if "calculator" in identity:
        text += f" -> {identity['calculator']}{_arguments(identity['calculator_kwargs'])}"
    return text


def _arguments(kwargs: Mapping[str, Any]) -> str:
    return "".join(f" {key}={_shown(value)}" for key, value in kwargs.items())


def _shown(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def differences(here: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, one entry per field: ``kwargs.sigma: 2.3
    here, 2.5 asked`` (nested objects by dotted path; absent fields say so)."""
    mine, theirs = _flat(here), _flat(asked)
    found = []
    for key in sorted(set(mine) | set(theirs)):
        if key not in mine or key not in theirs or \
                canonical_json(mine[key]) != canonical_json(theirs[key]):
            found.append(f"{key}: {_said(mine, key)} here, {_said(theirs, key)} asked")
    return found


def _flat(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping):  # (an empty one adds nothing)
            flat.update(_flat(item, f"{path}."))
        else:
            flat[path] = item
    return flat


def _said(values: Mapping[str, Any], key: str) -> str:
    return canonical_json(values[key]) if key in values else "absent"
