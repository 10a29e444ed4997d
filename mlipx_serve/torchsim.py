"""``mlipx_serve.torchsim``, the path models files name (``calculator=
"mlipx_serve.torchsim:TorchSimCalculator"``): the calculator is ``models.torchsim``'s."""

from mlipx_serve.models.torchsim import TorchSimCalculator

__all__ = ["TorchSimCalculator"]
