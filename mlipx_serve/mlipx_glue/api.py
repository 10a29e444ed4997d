"""``mlipx.serve``: mlipx-serve's serving API under the name mlipx documents.

Loaded as the module ``mlipx.serve`` by ``mlipx_hook`` when mlipx has none of its own,
so that ``from mlipx.serve import Models`` works as the mlipx documentation shows.
"""

from mlipx_serve import (
    ModelProcess,
    Models,
    RemoteCalculator,
    ServedModel,
    evaluate,
    get_broker_status,
    serve_model,
)

__all__ = ["ModelProcess", "Models", "RemoteCalculator", "ServedModel", "evaluate",
           "get_broker_status", "serve_model"]
