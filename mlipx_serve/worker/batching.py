"""A worker that evaluates several requests in one model call.

The broker and the wire stay plain MDP: a batching worker holds ``size`` worker
connections, so the broker hands it up to ``size`` requests at once; their handlers
(one thread each) queue them here, and one thread takes what has arrived, waiting at
most ``wait`` seconds for a fuller batch, and evaluates it in one call.

A model takes part through ``calculate_batch(atoms_list, properties) -> list[dict]`` on
its calculator (a failed structure may be an exception in its slot); ``batch_function``
also gives it to CHGNet's and TorchSim's calculators, and to any other calculator one
structure after another. When a batch call raises, each of its structures is tried
alone, so that one bad structure fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

log = logging.getLogger(__name__)

BatchFunction = Callable[[list[Atoms], list[str]], list[Any]]


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


# ------------------------------------------------------------ adapters


def batch_function(calc: Calculator) -> tuple[BatchFunction, bool]:
    """How to evaluate a list of structures with ``calc``, and whether that is one call."""
    own = getattr(calc, "calculate_batch", None)
    if callable(own):
        return own, True
    kind = f"{type(calc).__module__}.{type(calc).__name__}"
    if kind == "chgnet.model.dynamics.CHGNetCalculator":
        return _chgnet_batch(calc), True
    return _one_after_another(calc), False


def _one_after_another(calc: Calculator) -> BatchFunction:
    from mlipx_serve.worker.run import compute, owned

    def evaluate(structures: list[Atoms], properties: list[str]) -> list[Any]:
        results: list[Any] = []
        for atoms in structures:
            try:
                results.append(owned(compute(calc, atoms, properties)))
            except Exception as error:
                results.append(error)
        return results

    return evaluate


def _chgnet_batch(calc: Calculator) -> BatchFunction:
    """CHGNet's own batched prediction, converted the way its ASE calculator converts."""
    from pymatgen.io.ase import AseAtomsAdaptor

    model = calc.model

    def evaluate(structures: list[Atoms], properties: list[str]) -> list[Any]:
        graphs: list[Any] = []
        for atoms in structures:
            try:
                graphs.append(model.graph_converter(AseAtomsAdaptor.get_structure(atoms)))
            except Exception as error:  # e.g. isolated atoms, with on_isolated_atoms="error"
                graphs.append(error)
        good = [graph for graph in graphs if not isinstance(graph, Exception)]
        predicted = model.predict_graph(good, task="efsm", return_crystal_feas=True,
                                        return_site_energies=calc.return_site_energies,
                                        batch_size=max(1, len(good))) if good else []
        predicted = iter([predicted] if isinstance(predicted, dict) else predicted)
        return [graph if isinstance(graph, Exception) else
                _chgnet_results(calc, len(atoms), next(predicted))
                for atoms, graph in zip(structures, graphs, strict=True)]

    return evaluate


def _chgnet_results(calc: Calculator, count: int, prediction: dict) -> dict[str, Any]:
    factor = count if calc.model.is_intensive else 1
    results = {"energy": prediction["e"] * factor, "forces": prediction["f"],
               "stress": prediction["s"] * calc.stress_weight, "magmoms": prediction["m"],
               "crystal_fea": prediction["crystal_fea"]}
    results["free_energy"] = results["energy"]
    if calc.return_site_energies:
        results["energies"] = prediction["site_energies"]
    return results
