"""Typed exceptions, and the wire convention for errors that MDP itself has no words for.

Broker-originated errors travel as a FINAL (MDP/0.1: REPLY) whose service frame is
``mmi.error``. Workers cannot register ``mmi.`` names and never choose the service frame
of a reply (the broker writes it), so no worker reply can look like this. The body is
[status code, reason, message, requested service], all UTF-8.

A handler that raises is a worker-originated error: its FINAL body is
[WORKER_ERROR_MARKER, exception type, message]. The worker library refuses to send a
normal reply that starts with the marker, so the two cannot be confused either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WORKER_ERROR_MARKER = b"\x00mdp.worker-error"


class MDPError(Exception):
    """Base of every error this package raises about a request."""


class RequestTimeout(MDPError, TimeoutError):
    """No reply arrived in time (after every retry)."""


class BrokerError(MDPError):
    """The broker answered in place of a worker."""

    code = 500
    reason = "broker-error"

    def __init__(self, message: str, service: str = "", code: int | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.service = service
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"[{self.code} {self.reason}] {self.message}"


class RequestExpired(BrokerError):
    """No worker for the service took the request before it expired."""

    code = 504
    reason = "expired"


class QueueFull(BrokerError):
    """The service's queue was at its limit, so the request was refused."""

    code = 503
    reason = "queue-full"


class AttemptsExhausted(BrokerError):
    """Every worker that tried the request died on it; it was dropped."""

    code = 500
    reason = "attempts-exhausted"


class ServiceStartFailed(BrokerError):
    """A worker for the service was started on demand but did not come up."""

    code = 502
    reason = "start-failed"


class WorkerError(MDPError):
    """The worker's handler raised; the worker itself goes on."""

    def __init__(self, error_type: str, message: str, service: str = ""):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.service = service


_BY_REASON = {cls.reason: cls for cls in
              (RequestExpired, QueueFull, AttemptsExhausted, ServiceStartFailed)}


def broker_error_body(error: BrokerError) -> list[bytes]:
    return [str(error.code).encode(), error.reason.encode(), error.message.encode(),
            error.service.encode()]


def decode_broker_error(body: Sequence[Any]) -> BrokerError:
    parts = [bytes(f).decode("utf-8", "replace") for f in body]
    parts += [""] * (4 - len(parts))
    code, reason, message, service = parts[:4]
    cls = _BY_REASON.get(reason, BrokerError)
    return cls(message, service, code=int(code) if code.isdigit() else 500, reason=reason)


def worker_error_body(error_type: str, message: str) -> list[bytes]:
    return [WORKER_ERROR_MARKER, error_type.encode(), message.encode()]


def is_worker_error(body: Sequence[Any]) -> bool:
    return bool(body) and len(body[0]) == len(WORKER_ERROR_MARKER) and \
        bytes(body[0]) == WORKER_ERROR_MARKER


def decode_worker_error(body: Sequence[Any], service: str = "") -> WorkerError:
    parts = [bytes(f).decode("utf-8", "replace") for f in body[1:3]]
    parts += [""] * (2 - len(parts))
    return WorkerError(parts[0], parts[1], service)
