"""Serve machine-learned interatomic potentials to ASE over an MDP bus.

Each model name is a service: load a model once in a worker and use it from any number
of scripts as an ordinary ASE calculator.
"""

from .calculator import (
    Models,
    RemoteCalculator,
    ServedModel,
    get_broker_status,
    served_calculator_or_none,
)
from .generic import GenericASECalculator, ModelUnavailableError
from .payload import PayloadError, RemoteCalculationError

__all__ = [
    "GenericASECalculator", "ModelUnavailableError", "Models", "PayloadError",
    "RemoteCalculationError", "RemoteCalculator", "ServedModel", "get_broker_status",
    "served_calculator_or_none",
]
