"""How a model is served: batching, requests taken ahead, how many workers, on which GPUs,
how long an idle worker stays. Set where the model is defined (``serving={...}``), with
the broker's options as defaults and a worker's own command-line options above both, as
Triton's per-model configuration and LitServe's per-API settings do.

Plain data that travels with a model's definition and into the broker's status; not part
of what the model is (its fingerprint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mlipx_serve.errors import SettingsError

ALL_GPUS = "all"  # the GPUs the broker was given (--gpus)
NUMBER = (int, float)
# name -> (type, least, most): a batch is that many worker connections, a wait holds a
# request back; beyond these a setting is a typo, and infinity or NaN hangs a worker
LIMITS = {"batch_size": (int, 1, 1024), "max_workers": (int, 1, 1024),
          "prefetch": (int, 0, 64), "batch_wait": (NUMBER, 0, 10.0),
          "worker_timeout": (NUMBER, 0, 1e9)}


@dataclass(frozen=True)
class ServingSettings:
    """Each field None where it is not set at this level (``over`` fills it in)."""

    batch_size: int | None = None  # requests evaluated in one model call
    batch_wait: float | None = None  # seconds a batch waits to fill once a request is in
    max_workers: int | None = None  # workers autostart may run for the model (per GPU)
    prefetch: int | None = None  # requests a worker takes ahead while it computes
    gpus: str | tuple[int, ...] | None = None  # "all" (the broker's) or GPU numbers
    worker_timeout: float | None = None  # idle seconds after which a worker leaves

    def __post_init__(self) -> None:
        for name, (kind, low, high) in LIMITS.items():
            _check(name, getattr(self, name), kind, low, high)
        if isinstance(self.gpus, list):
            object.__setattr__(self, "gpus", tuple(self.gpus))
        if not (self.gpus is None or self.gpus == ALL_GPUS or isinstance(self.gpus, tuple)
                and all(type(gpu) is int and gpu >= 0 for gpu in self.gpus)):
            raise SettingsError(f"serving gpus must be \"{ALL_GPUS}\" or a list of GPU "
                                f"numbers, not {self.gpus!r}")

    @classmethod
    def of(cls, value: ServingSettings | Mapping[str, Any] | None) -> ServingSettings:
        """Settings from a plain dict (a definition's ``serving=``), checked."""
        if value is None:
            return cls()
        if isinstance(value, ServingSettings):
            return value
        if not isinstance(value, Mapping):
            raise SettingsError(f"serving must be a dict of settings, not a "
                                f"{type(value).__name__}")
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise SettingsError(f"unknown serving setting(s) {', '.join(unknown)}; the "
                                f"settings are {', '.join(known)}")
        return cls(**value)

    def over(self, defaults: ServingSettings) -> ServingSettings:
        """These settings where set, ``defaults``' elsewhere."""
        return ServingSettings(**{field.name: _first(getattr(self, field.name),
                                                     getattr(defaults, field.name))
                                  for field in fields(self)})

    def to_json(self) -> dict[str, Any]:
        """The settings that are set, as JSON data."""
        data = {name: value for name, value in dataclasses.asdict(self).items()
                if value is not None}
        if isinstance(self.gpus, tuple):
            data["gpus"] = list(self.gpus)
        return data


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check(name: str, value: Any, kind: type | tuple[type, ...], low: float,
           high: float) -> None:
    """A setting within its limits (a NaN is in none: every comparison with it fails)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        noun = "a whole number" if kind is int else "a number"
        raise SettingsError(f"serving {name} must be {noun} from {low:g} to {high:g}, "
                            f"not {value!r}")


DEFAULTS = ServingSettings(batch_size=1, batch_wait=0.01, max_workers=1, prefetch=0,
                           gpus=ALL_GPUS, worker_timeout=300.0)
