"""A worker that evaluates several requests in one model call.

The broker and the wire stay plain MDP: a batching worker holds ``size`` worker
connections, so the broker hands it up to ``size`` requests at once; their handlers
(one thread each) queue them here, and one thread takes what has arrived, waiting at
most ``wait`` seconds for a fuller batch, and evaluates it in one call.

A model takes part through ``calculate_batch`` (``models.batch``); any other is
evaluated one structure after another (``one_after_another``). When a batch call raises,
each of its structures is tried alone, so that one bad structure fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from mlipx_serve.models.batch import BatchFunction
from mlipx_serve.worker.compute import compute, owned

log = logging.getLogger(__name__)


class Batcher:
    """Collects structures from many handler threads into batches for one model."""

    def __init__(self, evaluate: BatchFunction, size: int, wait: float):
        self.evaluate = evaluate
        self.size = size
        self.wait = wait
        self.calls = 0  # batch calls made, for tests and logs
        self._pending: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="mlipx-batcher", daemon=True).start()

    def compute(self, atoms: Atoms, properties: list[str]) -> dict[str, Any]:
        """This structure's results, from whichever batch it lands in (blocks)."""
        done: Future = Future()
        self._pending.put((atoms, properties, done))
        return done.result()

    def _run(self) -> None:
        while True:
            batch = [self._pending.get()]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.size:
                try:
                    batch.append(self._pending.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._evaluate(batch)

    def _evaluate(self, batch: list[tuple[Atoms, list[str], Future]]) -> None:
        structures = [atoms for atoms, _, _ in batch]
        properties = sorted({name for _, names, _ in batch for name in names})
        self.calls += 1
        try:
            results = _checked(self.evaluate(structures, properties), len(batch))
        except Exception as error:
            if len(batch) == 1:
                results = [error]
            else:
                log.warning("a batch of %d failed (%s: %s); trying each structure alone",
                            len(batch), type(error).__name__, error)
                results = [self._alone(atoms, properties) for atoms in structures]
        for (_, _, done), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

    def _alone(self, atoms: Atoms, properties: list[str]) -> Any:
        self.calls += 1
        try:
            return _checked(self.evaluate([atoms], properties), 1)[0]
        except Exception as error:
            return error


def _checked(results: Sequence[Any], count: int) -> list[Any]:
    if len(results) != count:
        raise RuntimeError(f"calculate_batch returned {len(results)} results for {count} "
                           f"structures")
    return list(results)


def one_after_another(calc: Calculator) -> BatchFunction:
    """A batch of a model that cannot evaluate one: its structures one by one."""

    def evaluate(structures: list[Atoms], properties: list[str]) -> list[Any]:
        results: list[Any] = []
        for atoms in structures:
            try:
                results.append(owned(compute(calc, atoms, properties)))
            except Exception as error:
                results.append(error)
        return results

    return evaluate
