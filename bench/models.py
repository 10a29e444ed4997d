"""A models file for the benchmarks.

``bench/calc_overhead.py`` serves ``zero``, a calculator that does almost no work, and runs
the same calculator locally and behind ASE's SocketIOCalculator, so that what the timings
differ by is the transport, not the model. It is a model definition (module, class), so
that requests may name it and its worker checks them (protocol/model-definition.md).

``bench/throughput.py`` serves EMT under several names (one per worker set-up), and
``device``: a stand-in for a model on a GPU (``bench_calculators.DeviceLikeCalculator``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT

from mlipx_serve import GenericASECalculator
from mlipx_serve.models.catalogue import BUILTIN_MODELS

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # bench_calculators, for the workers
    sys.path.insert(0, HERE)
from bench_calculators import DeviceLikeCalculator  # noqa: E402


class Build:
    def __init__(self, calculator: type):
        self.calculator = calculator

    def get_calculator(self, **kwargs) -> Calculator:
        return self.calculator()


ZERO = GenericASECalculator(module="bench_calculators", class_name="ZeroCalculator")
ALL_MODELS = {"zero": ZERO, "device": Build(DeviceLikeCalculator), "emt": Build(EMT),
              "chgnet": BUILTIN_MODELS["chgnet"]}
# One name per worker set-up of bench/throughput.py, so that all can wait side by side.
ALL_MODELS.update({f"{model}-{setup}": ALL_MODELS[model] for model in ("emt", "device", "chgnet")
                   for setup in ("one", "prefetch", "many", "batched")})
