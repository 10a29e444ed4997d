"""A worker that evaluates several requests in one model call.

The broker and the wire stay plain MDP: a batching worker holds ``size`` worker
connections, so the broker hands it up to ``size`` requests at once; their handlers
(one thread each) queue them here, and one thread takes what has arrived and evaluates
it in one call. It waits for more (at most ``wait`` seconds) only where more is on its
way: as the last batch's replies went out, the broker handed those connections the next
requests it had queued, so a batch waits for as many as the last one held, beside those
that came while it was computed. A lone request (a relaxation's step) is never held back
for company that is not coming.

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
        return self._submit(atoms, properties).result()

    def compute_all(self, structures: list[Atoms], properties: list[str]) -> list[Any]:
        """Each structure's results, or its exception, in order: a chunk's structures
        count towards the batches as each request's structure does (blocks)."""
        futures = [self._submit(atoms, properties) for atoms in structures]
        return [future.exception() or future.result() for future in futures]

    def _submit(self, atoms: Atoms, properties: list[str]) -> Future:
        done: Future = Future()
        self._pending.put((atoms, properties, done))
        return done

    def _run(self) -> None:
        expected = 1  # what was here when the last batch was done, and as many as it held
        while True:
            batch = [self._pending.get()]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.size:
                patience = deadline - time.monotonic() if len(batch) < expected else 0.0
                try:
                    batch.append(self._pending.get(timeout=max(0.0, patience)))
                except queue.Empty:
                    break
            self._evaluate(batch)
            expected = min(self.size, len(batch) + self._pending.qsize())

    def _evaluate(self, batch: list[tuple[Atoms, list[str], Future]]) -> None:
        structures = [atoms for atoms, _, _ in batch]
        properties = sorted({name for _, names, _ in batch for name in names})
        results, calls = together(self.evaluate, structures, properties)
        self.calls += calls
        for (_, _, done), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)


def together(evaluate: BatchFunction, structures: list[Atoms], properties: list[str]
             ) -> tuple[list[Any], int]:
    """Each structure's results, or its exception, from one call of ``evaluate``; when
    that call raises, from one call per structure, so that one bad structure fails
    alone. Also how many calls it took."""
    try:
        return _checked(evaluate(structures, properties), len(structures)), 1
    except Exception as error:
        if len(structures) == 1:
            return [error], 1
        log.warning("a batch of %d failed (%s: %s); trying each structure alone",
                    len(structures), type(error).__name__, error)
    return [_alone(evaluate, atoms, properties) for atoms in structures], 1 + len(structures)


def _alone(evaluate: BatchFunction, atoms: Atoms, properties: list[str]) -> Any:
    try:
        return _checked(evaluate([atoms], properties), 1)[0]
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
