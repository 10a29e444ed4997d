"""Serve machine-learned interatomic potentials to ASE over an MDP bus.

Each model name is a service: load a model once in a worker and use it from any number
of scripts as an ordinary ASE calculator.

The names below load on first use: ``mlipx_serve_hook.pth`` imports this package in
every Python process of the environment (``mlipx_hook``), which must cost nothing.
"""

TYPE_CHECKING = False  # not typing's: importing typing would cost every Python start-up
# public name -> the module of this package that defines it
_EXPORTS = {
    "GenericASECalculator": "client.servable",
    "RemoteCalculator": "client.calculator",
    "Models": "client.served",
    "ServedModel": "client.served",
    "served_calculator_or_none": "client.served",
    "get_broker_status": "client.broker_status",
    "evaluate": "client.mapping",
    "StructureFailed": "client.mapping",
    "serve_model": "client.notebook",
    "ModelProcess": "client.notebook",
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
    from mlipx_serve.client.broker_status import get_broker_status  # noqa: F401
    from mlipx_serve.client.calculator import RemoteCalculator  # noqa: F401
    from mlipx_serve.client.mapping import StructureFailed, evaluate  # noqa: F401
    from mlipx_serve.client.notebook import ModelProcess, serve_model  # noqa: F401
    from mlipx_serve.client.servable import GenericASECalculator  # noqa: F401
    from mlipx_serve.client.served import Models, ServedModel, served_calculator_or_none  # noqa: F401
    from mlipx_serve.errors import (  # noqa: F401
        MlipxServeError,
        ModelStartError,
        ModelUnavailableError,
        PayloadError,
        RemoteCalculationError,
        RemotePropertyNotImplementedError,
        ServingError,
    )


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
