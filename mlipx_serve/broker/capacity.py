"""How many worker processes an autostarting broker runs at once, over all its models, and
which idle one leaves to make room: that of the model least recently used, as ollama's
limit of loaded models and Triton's model control do. A parameter scan that defines
twenty models must not start twenty copies of a model on one GPU; requests that find no
room wait in their queue until a worker leaves or goes idle.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence


def default_limit(gpus: Sequence[str]) -> int:
    """Two workers a GPU where the broker has GPUs, else one a core (at least two)."""
    return 2 * len(gpus) if gpus else max(2, os.cpu_count() or 1)


class Capacity:
    """The limit (None: none), when each model was last used, how many of each model's
    workers were retired, and the models whose requests wait for room, oldest first."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.last_used: dict[str, float] = {}
        self.retired: Counter[str] = Counter()
        self.waiting: dict[str, None] = {}  # (an ordered set)

    def used(self, model: str, now: float) -> None:
        self.last_used[model] = now

    def full(self, running: int) -> bool:
        return self.limit is not None and running >= self.limit

    def to_retire(self, idle: Mapping[str, Sequence[object]], wanting: str
                  ) -> tuple[str, object] | None:
        """(model, its idle worker) to retire for ``wanting``: of the models with an idle
        worker, the least recently used other one; None if there is none."""
        models = [model for model, workers in idle.items() if workers and model != wanting]
        if not models:
            return None
        model = min(models, key=lambda name: self.last_used.get(name, 0.0))
        return model, idle[model][0]
