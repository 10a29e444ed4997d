"""A models.py whose models cannot start, are slow, or kill their worker: for the
autostart error tests and the slow or fatal structures of ``map``.

Written the way users write custom entries for mlipx: dataclasses with ``get_calculator``.
"""

from __future__ import annotations

import dataclasses
import os
import time

from ase.calculators.emt import EMT


@dataclasses.dataclass
class MissingWeights:
    """Fails the way a model with a wrong weights path fails: while loading."""

    path: str = "/nonexistent/model.pt"

    def get_calculator(self, **kwargs):
        raise RuntimeError(f"weights not found: {self.path}")


@dataclasses.dataclass
class SlowToLoad:
    """Loads for far longer than the broker's start timeout in the tests."""

    seconds: float = 120.0

    def get_calculator(self, **kwargs):
        time.sleep(self.seconds)
        return EMT()


ALL_MODELS = {"broken": MissingWeights(), "slow": SlowToLoad()}


class SleepyEMT(EMT):
    """EMT that takes a while per call, like a model on a slow device."""

    seconds = 0.05

    def calculate(self, *args, **kwargs):
        time.sleep(self.seconds)
        super().calculate(*args, **kwargs)


class SlowCallEMT(SleepyEMT):
    """So slow that a test can act while a worker holds its request."""

    seconds = 30.0


class FatalOnUraniumEMT(EMT):
    """Ends its worker process, as a crash in a model's native code does, on uranium."""

    def calculate(self, atoms=None, *args, **kwargs):
        if 92 in atoms.numbers:
            os._exit(3)
        super().calculate(atoms, *args, **kwargs)


@dataclasses.dataclass
class Build:
    calculator: type

    def get_calculator(self, **kwargs):
        return self.calculator()


ALL_MODELS.update({"sleepy-emt": Build(SleepyEMT), "slow-call": Build(SlowCallEMT),
                   "fatal-on-uranium": Build(FatalOnUraniumEMT)})
