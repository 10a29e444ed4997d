"""Every exception mlipx-serve raises of its own, under one base, ``MlipxServeError``.

Each also derives from the exception a caller would already catch for such a failure:
ASE's ``CalculationFailed`` and ``PropertyNotImplementedError`` for calculations,
``ImportError`` for a missing model package, ``ValueError`` for bad input.
"""

from __future__ import annotations

from ase.calculators.calculator import CalculationFailed, PropertyNotImplementedError


class MlipxServeError(Exception):
    """Base of every error this package raises of its own."""


class PayloadError(MlipxServeError, ValueError):
    """Frames that do not follow the ASE payload format."""


class RemoteError(MlipxServeError):
    """A served model failed on its worker; carries the remote error as text, never as
    an object, so that no foreign type has to be rebuilt here."""

    def __init__(self, error_type: str, message: str, traceback: str = "",
                 model: str | None = None, worker: str | None = None) -> None:
        super().__init__(error_type, message, traceback)
        self.error_type = error_type
        self.remote_message = message
        self.remote_traceback = traceback
        self.model = model
        self.worker = worker

    def __str__(self) -> str:
        text = f"{self.error_type}: {self.remote_message}"
        where = [f"{key} {value!r}" for key, value in (("model", self.model),
                                                       ("worker", self.worker)) if value]
        return f"{text} ({', '.join(where)})" if where else text


class RemoteCalculationError(RemoteError, CalculationFailed):
    """The model raised while computing on its worker."""


class RemotePropertyNotImplementedError(RemoteError, PropertyNotImplementedError):
    """The served model does not compute a property that was asked for."""


class ServingError(MlipxServeError, CalculationFailed):
    """The bus could not deliver a calculation: no broker, no worker in time, a model
    that failed to start. ``__cause__`` is the bus's own error (an ``mdp.MDPError``)."""


class NotServed(ServingError):
    """A model cannot be served now (no broker, no worker and none to be started, a
    definition no worker can rebuild); the message says why and what fixes it."""


class ServiceStartFailedError(ServingError):
    """The worker for a model was started on demand and did not come up; the message
    carries why (an exit code, a job's state) and the worker's last lines of output."""


class DefinitionMismatch(ServingError):
    """A worker refused a request for another model than the one it serves (its
    definition's fingerprint differs from the request's); the message names the
    differences. Raised on the worker, and again in the client that sent the request."""


class ModelUnavailableError(MlipxServeError, ImportError):
    """A model's Python package is not installed here.

    An ImportError, so code that already guards model imports with
    ``except ImportError`` keeps working; the message carries the fix.
    """

    def __init__(self, message: str, *, module: str, extras: list[str], model: str | None):
        super().__init__(message, name=module)
        self.module = module
        self.extras = extras
        self.model = model


class DefinitionError(MlipxServeError, ValueError):
    """A model definition has no canonical form (a keyword argument that is not plain
    JSON data) or is malformed; the message names the field."""


class EndpointError(MlipxServeError, ValueError):
    """A broker endpoint that cannot be used; the message names it and the forms that can."""


class RegistryError(MlipxServeError, ValueError):
    """A models file cannot be used; the message names the file and the entry."""


class SettingsError(MlipxServeError, ValueError):
    """A broker cannot start as set; the message says why and what to change."""


class ServeError(MlipxServeError, RuntimeError):
    """A worker cannot start; the message says why and what to do."""


class ModelStartError(ServeError):
    """The worker for a model defined in Python did not come up; the message says why."""
