"""A Majordomo (MDP/0.2 and MDP/0.1, with MMI) service bus: broker, worker and clients.

``Broker``, ``Worker``, ``Client`` and ``AsyncClient`` are imported on first use, so that
``import mdp`` (the codec, the core and the errors) needs neither zmq nor asyncio.
"""

__version__ = "0.1.0"

from .core import BrokerConfig, Event, EventKind  # noqa: E402
from .errors import (  # noqa: E402
    AttemptsExhausted,
    BrokerError,
    BrokerStopping,
    BrokerUnavailable,
    MDPError,
    QueueFull,
    RequestExpired,
    RequestTimeout,
    ServiceNameTooLong,
    ServiceStartFailed,
    ServiceUnknown,
    WorkerError,
)
from .protocol import Dialect, ProtocolError  # noqa: E402

_LAZY = {"Broker": "broker", "Worker": "worker", "Client": "client", "AsyncClient": "aio",
         "CurveError": "security"}

__all__ = [
    "AsyncClient", "AttemptsExhausted", "Broker", "BrokerConfig", "BrokerError",
    "BrokerStopping", "BrokerUnavailable", "Client", "CurveError", "Dialect", "Event",
    "EventKind", "MDPError", "ProtocolError", "QueueFull", "RequestExpired", "RequestTimeout",
    "ServiceNameTooLong", "ServiceStartFailed", "ServiceUnknown", "Worker", "WorkerError",
    "__version__",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mdp' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
