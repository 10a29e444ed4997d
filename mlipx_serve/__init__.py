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
    "ModelUnavailableError": "generic",
    "Models": "calculator",
    "RemoteCalculator": "calculator",
    "ServedModel": "calculator",
    "get_broker_status": "calculator",
    "served_calculator_or_none": "calculator",
    "PayloadError": "payload",
    "RemoteCalculationError": "payload",
    "serve_model": "python_models",
    "ModelProcess": "python_models",
    "ModelStartError": "python_models",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .calculator import (  # noqa: F401
        Models,
        RemoteCalculator,
        ServedModel,
        get_broker_status,
        served_calculator_or_none,
    )
    from .generic import GenericASECalculator, ModelUnavailableError  # noqa: F401
    from .payload import PayloadError, RemoteCalculationError  # noqa: F401
    from .python_models import ModelProcess, ModelStartError, serve_model  # noqa: F401


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
