"""The one translation of what the bus and the workers say into ASE's exception types: a
model that raised is a ``RemoteCalculationError`` (a ``CalculationFailed``), a property it
lacks a ``RemotePropertyNotImplementedError``, a bus that could not deliver a
``ServingError``, each with a message that says what to do."""

from __future__ import annotations

from mdp.errors import (
    BrokerUnavailable,
    MDPError,
    RequestTimeout,
    ServiceStartFailed,
    WorkerError,
)
from mlipx_serve import environment
from mlipx_serve.errors import (
    DefinitionMismatch,
    NotServed,
    PayloadError,
    RemoteCalculationError,
    RemotePropertyNotImplementedError,
    ServiceStartFailedError,
    ServingError,
)
from mlipx_serve.wire.endpoints import start_broker
from mlipx_serve.wire.payload import RemoteFailure

# Failures after which a calculator built with a fallback computes locally instead: its
# model's worker could not start, serves another model than the one defined, or the
# model could not be defined again at a broker that restarted.
FALLS_BACK = (DefinitionMismatch, ServiceStartFailedError, NotServed)


def served_error(error: Exception, model: str, broker: str) -> Exception:
    """The ASE-typed exception for a failed served calculation (its ``__cause__`` the bus's
    own error, where the bus failed)."""
    if isinstance(error, WorkerError):
        return remote_error(error, model)
    if isinstance(error, MDPError):
        failure = serving_error(error, model, broker)
        failure.__cause__ = error
        return failure
    error.model = model  # a RemoteError: an error reply of payload version 1
    return error


def serving_error(error: MDPError, model: str, broker: str) -> ServingError:
    """The ASE-typed exception for what the bus said; raise it ``from`` that error."""
    if isinstance(error, BrokerUnavailable) and error.refused:
        return ServingError(f"model '{model}': {error.cause}; give the broker's key (and an "
                            f"admitted key pair) with ${environment.CURVE_SERVER_KEY} (and "
                            f"${environment.CURVE_SECRET_KEY})")
    if isinstance(error, RequestTimeout):  # (a BrokerUnavailable is one too)
        fix = f"start one with `{start_broker(broker)}`" if \
            isinstance(error, BrokerUnavailable) else \
            f"`mlipx serve-status --broker {broker}` shows what its workers do"
        return ServingError(f"model '{model}': {error.cause}; {fix}")
    kind = ServiceStartFailedError if isinstance(error, ServiceStartFailed) else ServingError
    return kind(f"model '{model}' via {broker}: {error}")


def structure_error(failure: RemoteFailure, model: str) -> Exception:
    """The ASE-typed exception for one structure of a chunk that failed on the worker."""
    return remote_error(WorkerError(failure.error_type, failure.message,
                                    traceback=failure.traceback), model)


def remote_error(error: WorkerError, model: str) -> Exception:
    """The ASE-typed exception for what the model's worker raised."""
    worker = getattr(error, "worker", None) or None
    if error.error_type == "PayloadError":
        return PayloadError(f"worker {worker or '?'} of model '{model}' refused the request: "
                            f"{error.message}")
    if error.error_type == "DefinitionMismatch":
        return DefinitionMismatch(f"worker {worker or '?'} of '{model}' refused the request: "
                                  f"{error.message}")
    kind = RemotePropertyNotImplementedError if \
        error.error_type == "PropertyNotImplementedError" else RemoteCalculationError
    return kind(error.error_type, error.message, getattr(error, "traceback", "") or "",
                model=model, worker=worker)
