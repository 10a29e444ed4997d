"""Typed exceptions, and the wire convention for errors that MDP itself has no words for.

Both conventions put a reserved marker in the first body frame of a final reply, and leave
the service frame alone: it always names the service the client asked for, as RFC 7 and
RFC 18 clients check (protocol/mdp.md section 8).

- A broker error (the broker answers in place of a worker): [BROKER_ERROR_MARKER, status
  code, reason, message]. No worker can send it: the worker library refuses to, and the
  broker turns a foreign worker's reply that starts with it into a worker error.
- A worker error (the handler raised): [WORKER_ERROR_MARKER, exception type, message,
  traceback, worker]; the last two frames are optional.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WORKER_ERROR_MARKER = b"\x00mdp.worker-error"
BROKER_ERROR_MARKER = b"\x00mdp.broker-error"
MARKER_LENGTH = 17  # both markers: the length test is the cheap first check
RESERVED_MARKERS = (WORKER_ERROR_MARKER, BROKER_ERROR_MARKER)


class MDPError(Exception):
    """Base of every error this package raises."""


class RequestTimeout(MDPError, TimeoutError):
    """No reply arrived in time. ``cause`` is what happened without the advice of the
    message (a command of this package's), for layers above that give advice of their
    own."""

    def __init__(self, message: str, *, cause: str | None = None):
        super().__init__(message)
        self.cause = cause or message


class BrokerUnavailable(RequestTimeout):
    """No broker answers at the endpoint (``refused``: one did, but refused the
    connection), or the one that did was lost for good.

    A ``RequestTimeout`` of a particular kind, so that code which waits for either need
    not tell them apart; the message says which it was and how to start a broker.
    """

    def __init__(self, message: str, *, cause: str | None = None, refused: bool = False):
        super().__init__(message, cause=cause)
        self.refused = refused


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


class BrokerStopping(BrokerError):
    """The broker stopped while it held the request (queued, or with a worker)."""

    code = 503
    reason = "broker-stopping"


class AttemptsExhausted(BrokerError):
    """Every worker that tried the request died on it; it was dropped."""

    code = 500
    reason = "attempts-exhausted"


class ServiceStartFailed(BrokerError):
    """A worker for the service was started on demand but did not come up."""

    code = 502
    reason = "start-failed"


class ServiceUnknown(BrokerError):
    """Nothing serves the service and nothing will: the broker (or a layer above it that
    starts workers) knows no way to serve it, and says so rather than let it wait."""

    code = 404
    reason = "unknown-service"


class ServiceNameTooLong(BrokerError):
    """The service name is longer than the broker accepts (protocol.MAX_SERVICE_NAME)."""

    code = 400
    reason = "name-too-long"


class WorkerError(MDPError):
    """The worker's handler raised; the worker itself goes on.

    ``traceback`` is the handler's traceback as text and ``worker`` the identity of the
    worker that ran it, both "" when the worker did not send them.
    """

    def __init__(self, error_type: str, message: str, service: str = "",
                 traceback: str = "", worker: str = ""):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.service = service
        self.traceback = traceback
        self.worker = worker


_BY_REASON = {cls.reason: cls for cls in (RequestExpired, QueueFull, BrokerStopping,
                                          AttemptsExhausted, ServiceStartFailed,
                                          ServiceUnknown, ServiceNameTooLong)}


def reserved_marker(body: Sequence[Any]) -> bytes | None:
    """The reserved marker the body starts with, if any."""
    if body and len(body[0]) == MARKER_LENGTH:
        first = bytes(body[0])
        if first in RESERVED_MARKERS:
            return first
    return None


def broker_error_body(error: BrokerError) -> list[bytes]:
    return [BROKER_ERROR_MARKER, str(error.code).encode(), error.reason.encode(),
            error.message.encode()]


def decode_broker_error(body: Sequence[Any], service: str = "") -> BrokerError:
    """The error a broker-error body carries; frames after the marker may be missing."""
    code, reason, message = _texts(body[1:4], 3)
    cls = _BY_REASON.get(reason, BrokerError)
    return cls(message, service, code=int(code) if code.isdigit() else 500, reason=reason)


def worker_error_body(error_type: str, message: str, traceback: str = "",
                      worker: str = "") -> list[bytes]:
    return [WORKER_ERROR_MARKER, error_type.encode(), message.encode(), traceback.encode(),
            worker.encode()]


def is_worker_error(body: Sequence[Any]) -> bool:
    return reserved_marker(body) == WORKER_ERROR_MARKER


def decode_worker_error(body: Sequence[Any], service: str = "") -> WorkerError:
    """The error a worker-error body carries; old three-frame bodies decode too."""
    error_type, message, traceback, worker = _texts(body[1:5], 4)
    return WorkerError(error_type, message, service, traceback, worker)


def _texts(frames: Sequence[Any], count: int) -> list[str]:
    texts = [bytes(f).decode("utf-8", "replace") for f in frames]
    return texts + [""] * (count - len(texts))
