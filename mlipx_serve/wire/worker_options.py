"""How a worker runs: the options of ``mlipx serve``, the one place its command line is
spelled. Whoever starts a worker (an autostarting broker, a SLURM job, ``serve-submit``,
``serve_model``) builds ``WorkerOptions`` and runs ``command()``; ``mlipx serve`` takes
its defaults from here and parses its arguments back into one."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mlipx_serve.wire.serving import ServingSettings


@dataclass(frozen=True)
class WorkerOptions:
    model: str  # the name the worker registers (its MDP service)
    broker: str | None = None  # its endpoint (default: the private broker's worker side)
    connect: str | None = None  # a connection file, in place of broker and keys
    models_files: tuple[str, ...] = ()
    definition: str | None = None  # the model as a client defined it (JSON)
    factory: str | None = None  # a pickled function that builds it (serve_model's file)
    # How it serves, each None where the command line does not say: then the model's
    # serving settings say, else serving.DEFAULTS (``serving()``).
    timeout: float | None = None  # idle seconds before it leaves (0: never)
    batch_size: int | None = None
    batch_wait: float | None = None
    prefetch: int | None = None
    heartbeat: float = 2.5
    exit_with: int | None = None  # a pid whose end ends the worker
    orphan_timeout: float = 60.0  # with connect: seconds without an answer from the broker
    curve_server_key: str | None = None  # key files
    curve_secret_key: str | None = None
    no_uv: bool = False  # never re-run under uv for the model's extras
    verbose: bool = False

    def arguments(self) -> list[str]:
        """What follows ``mlipx serve``: the model, and each option that differs from its
        default, spelled as the command line spells it (``--batch-size 16``)."""
        arguments = [self.model]
        for field in fields(self)[1:]:
            value = getattr(self, field.name)
            if value is None or value == field.default or \
                    (field.name == "models_files" and not value):
                continue
            flag = f"--{field.name.replace('_', '-')}"
            if field.name == "models_files":
                arguments += [item for path in value for item in ("--models", str(path))]
            elif isinstance(value, bool):
                arguments.append(flag)
            else:
                arguments += [flag, str(value)]
        return arguments

    def serving(self) -> ServingSettings:
        """The serving settings this command line gives (None where it gives none)."""
        return ServingSettings(batch_size=self.batch_size, batch_wait=self.batch_wait,
                               prefetch=self.prefetch, worker_timeout=self.timeout)

    def serving_as(self, settings: ServingSettings) -> WorkerOptions:
        """These options with ``settings``' batching, prefetching and idle timeout."""
        return dataclasses.replace(self, batch_size=settings.batch_size,
                                   batch_wait=settings.batch_wait, prefetch=settings.prefetch,
                                   timeout=settings.worker_timeout)

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "mlipx_serve.cli", "serve", *self.arguments()]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["models_files"] = list(self.models_files)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerOptions:
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["models_files"] = tuple(values.get("models_files") or ())
        return cls(**values)


DEFAULTS = WorkerOptions(model="")
