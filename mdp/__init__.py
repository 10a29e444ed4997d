"""A Majordomo (MDP/0.2 and MDP/0.1, with MMI) service bus: broker, worker and clients."""

__version__ = "0.1.0"

from .core import BrokerConfig, Event  # noqa: E402
from .errors import (  # noqa: E402
    AttemptsExhausted,
    BrokerError,
    MDPError,
    QueueFull,
    RequestExpired,
    RequestTimeout,
    ServiceStartFailed,
    WorkerError,
)
from .protocol import Dialect, ProtocolError  # noqa: E402

__all__ = [
    "AttemptsExhausted", "BrokerConfig", "BrokerError", "Dialect", "Event", "MDPError",
    "ProtocolError", "QueueFull", "RequestExpired", "RequestTimeout", "ServiceStartFailed",
    "WorkerError", "__version__",
]
