"""Serve machine-learned interatomic potentials to ASE over an MDP bus.

Each model name is a service: load a model once in a worker and use it from any number
of scripts as an ordinary ASE calculator.

The names below load on first use: ``mlipx_serve_hook.pth`` imports this package in
every Python process of the environment (``mlipx_hook``), which must cost nothing.
"""

TYPE_CHECKING = False  # not typing's: importing typing would cost every Python start-up
# public name -> the module of this package that defines it
_EXPORTS = {
    "GenericASECalculator": "generic",
    "RemoteCalculator": "calculator",
    "Models": "served",
    "ServedModel": "served",
    "served_calculator_or_none": "served",
    "get_broker_status": "broker_status",
    "evaluate": "mapping",
    "StructureFailed": "mapping",
    "serve_model": "python_models",
    "ModelProcess": "python_models",
    "MlipxServeError": "errors",
    "ModelStartError": "errors",
    "ModelUnavailableError": "errors",
    "PayloadError": "errors",
    "RemoteCalculationError": "errors",
    "RemotePropertyNotImplementedError": "errors",
    "ServingError": "errors",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .broker_status import get_broker_status  # noqa: F401
    from .calculator import RemoteCalculator  # noqa: F401
    from .errors import (  # noqa: F401
        MlipxServeError,
        ModelStartError,
        ModelUnavailableError,
        PayloadError,
        RemoteCalculationError,
        RemotePropertyNotImplementedError,
        ServingError,
    )
    from .generic import GenericASECalculator  # noqa: F401
    from .mapping import StructureFailed, evaluate  # noqa: F401
    from .python_models import ModelProcess, serve_model  # noqa: F401
    from .served import Models, ServedModel, served_calculator_or_none  # noqa: F401


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlipx_serve' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
