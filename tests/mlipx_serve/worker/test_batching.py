"""A worker's batches and prefetched requests, without a broker."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from support import HELPERS

from mlipx_serve.models.models_file import load_models_file
from mlipx_serve.wire.payload import decode_reply, encode_request
from mlipx_serve.worker.batching import Batcher
from mlipx_serve.worker.compute import build_calculator
from mlipx_serve.worker.handler import request_handler

pytestmark = pytest.mark.timeout(120)


MODELS = HELPERS / "batch_models.py"
EXACT = 1e-12


def test_a_prefetching_worker_replies_with_copies_of_arrays_the_model_fills_again():
    model = load_models_file(MODELS)["one-at-a-time-emt"]
    handle = request_handler(build_calculator(model), "one-at-a-time-emt", prefetch=1)
    first, second = bulk("Cu", cubic=True), bulk("Cu", cubic=True)  # the model reuses its
    first.rattle(0.03, seed=0)                                         # forces array for
    second.rattle(0.03, seed=2)                                        # the same size
    reply = handle(encode_request(first, ["energy", "forces"]))
    handle(encode_request(second, ["energy", "forces"]))
    local = first.copy()
    local.calc = EMT()
    np.testing.assert_allclose(decode_reply(reply)["forces"], local.get_forces(), rtol=0,
                               atol=EXACT)


class GatedBatches:
    """A batch function that records each batch's structures (H atoms: their counts) and,
    while ``gate`` is shut, holds the batch in hand, so that requests pile up meanwhile."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.taken = threading.Semaphore(0)  # released as each batch is taken

    def __call__(self, structures, properties):
        self.batches.append([len(atoms) for atoms in structures])
        self.taken.release()
        assert self.gate.wait(30)
        return [{"n": len(atoms)} if len(atoms) != 13 else ValueError("13")
                for atoms in structures]


def submit(batcher: Batcher, n: int, results: dict) -> threading.Thread:
    def compute() -> None:
        try:
            results[n] = batcher.compute(Atoms(f"H{n}"), ["energy"])
        except ValueError as error:
            results[n] = str(error)

    thread = threading.Thread(target=compute)
    thread.start()
    return thread


def test_a_lone_request_is_not_held_back_for_company():
    batches = GatedBatches()
    batches.gate.set()
    batcher = Batcher(batches, size=16, wait=600.0)  # (a wait that would fail the test)
    results: dict = {}
    for n in (1, 2):  # one after the other, as a relaxation's steps
        submit(batcher, n, results).join(30)
    assert results == {1: {"n": 1}, 2: {"n": 2}} and batches.batches == [[1], [2]]


def test_after_a_batch_of_several_it_waits_for_as_many_again_but_not_for_ever():
    batches = GatedBatches()
    batcher = Batcher(batches, size=4, wait=2.0)
    results: dict = {}
    threads = [submit(batcher, 1, results)]
    assert batches.taken.acquire(timeout=30)  # 1 is in hand, alone: nothing else came
    threads += [submit(batcher, n, results) for n in (2, 13, 4, 5)]
    while batcher._pending.qsize() < 4:  # all four wait behind it
        time.sleep(0.01)
    batches.gate.set()
    for thread in threads:
        thread.join(30)
    assert batches.batches == [[1], [2, 13, 4, 5]] and results[13] == "13"
    # After a batch of four, more is on its way: 6 waits, and 7 joins it.
    for thread in [submit(batcher, 6, results), submit(batcher, 7, results)]:
        thread.join(30)
    assert batches.batches[2] == [6, 7]
    submit(batcher, 8, results).join(30)  # waits for a second one, in vain, then goes
    submit(batcher, 9, results).join(30)  # after a batch of one: at once
    assert batches.batches[3:] == [[8], [9]]
    assert results == {n: {"n": n} for n in (1, 2, 4, 5, 6, 7, 8, 9)} | {13: "13"}
