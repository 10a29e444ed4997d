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


def test_the_batcher_waits_for_a_fuller_batch_but_not_for_ever():
    sizes = []

    def evaluate_batch(structures, properties):
        sizes.append(len(structures))
        return [{"n": len(atoms)} if len(atoms) != 13 else ValueError("13") for atoms in
                structures]

    batcher = Batcher(evaluate_batch, size=4, wait=0.3)
    results, errors = {}, {}

    def compute(n: int) -> None:
        try:
            results[n] = batcher.compute(Atoms(f"H{n}"), ["energy"])
        except ValueError as error:
            errors[n] = str(error)

    threads = [threading.Thread(target=compute, args=(n,)) for n in (1, 2, 13, 4, 5)]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(5)
    assert results == {n: {"n": n} for n in (1, 2, 4, 5)} and errors == {13: "13"}
    assert sizes == [4, 1]  # a full batch at once; the fifth after waiting 0.3 s alone

