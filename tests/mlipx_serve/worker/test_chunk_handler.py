"""A worker given a chunk of structures (payload version 2), without a broker: each
structure's result or error in its place, computed in one ``calculate_batch`` call where
the model has one, and counted towards a batching worker's batches one by one."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from support import HELPERS

from mlipx_serve.errors import DefinitionMismatch
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.models.models_file import load_models_file
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.payload import (
    RemoteFailure,
    decode_chunk_reply,
    encode_chunk,
    encode_request,
    read_chunk_reply,
    read_reply,
)
from mlipx_serve.worker.compute import build_calculator
from mlipx_serve.worker.handler import request_handler

pytestmark = pytest.mark.timeout(60)

EXACT = 1e-12
PROPERTIES = ["energy", "forces"]


def structures(count: int) -> list[Atoms]:
    found = []
    for i in range(count):
        atoms = bulk("Cu", cubic=True) * (1 + i % 2, 1, 1) if i % 3 else molecule("CH4")
        atoms.rattle(0.03, seed=i)
        found.append(atoms)
    return found


def uranium() -> Atoms:
    return Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]])  # EMT has no U


def answered(handle, given: list[Atoms], definition: Definition | None = None) -> list:
    frames = [bytes(frame) for frame in encode_chunk(given, PROPERTIES, definition)]
    return decode_chunk_reply([bytes(frame) for frame in handle(frames)])


def assert_emt(given: Atoms, results: dict) -> None:
    local = given.copy()
    local.calc = EMT()
    assert results["energy"] == pytest.approx(local.get_potential_energy(), abs=EXACT)
    np.testing.assert_allclose(results["forces"], local.get_forces(), rtol=0, atol=EXACT)


def counting_handler(**options):
    model = load_models_file(HELPERS / "batch_models.py")["counting-emt"]
    return request_handler(build_calculator(model), "counting-emt", **options)


def test_each_structure_of_a_chunk_is_computed_in_its_place():
    given = structures(7)
    emt = BUILTIN_MODELS["emt"].definition()
    got = answered(request_handler(EMT(), "emt", emt), given, emt)
    assert len(got) == len(given)
    for atoms, results in zip(given, got, strict=True):
        assert_emt(atoms, results)


def test_a_structure_that_fails_in_a_chunk_fails_alone_in_its_place():
    given = [*structures(3), uranium(), *structures(2)]
    got = answered(request_handler(EMT(), "emt"), given)
    assert isinstance(got[3], RemoteFailure)
    assert "No EMT-potential for U" in got[3].message
    for atoms, results in zip(given[:3] + given[4:], got[:3] + got[4:], strict=True):
        assert_emt(atoms, results)


def test_a_chunk_for_another_model_is_refused_whole():
    lj = Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": 2.3})
    handle = request_handler(EMT(), "emt", BUILTIN_MODELS["emt"].definition())
    with pytest.raises(DefinitionMismatch, match="kwargs.sigma"):
        answered(handle, structures(3), lj)


def test_a_model_with_calculate_batch_gets_the_chunk_in_one_call():
    given = structures(6)
    got = answered(counting_handler(), given)
    assert len({results["batch_call"] for results in got}) == 1
    assert {results["batch_size"] for results in got} == {6}
    for atoms, results in zip(given, got, strict=True):
        assert_emt(atoms, results)


def test_a_batch_call_that_fails_is_tried_structure_by_structure():
    given = [*structures(2), uranium(), *structures(2)]
    got = answered(counting_handler(), given)  # the model raises for a batch holding U
    assert isinstance(got[2], RemoteFailure) and "No EMT-potential for U" in got[2].message
    assert {results["batch_size"] for results in got[:2] + got[3:]} == {1}
    for atoms, results in zip(given[:2] + given[3:], got[:2] + got[3:], strict=True):
        assert_emt(atoms, results)


def test_a_batching_worker_counts_a_chunks_structures_towards_its_batches():
    given = structures(10)
    got = answered(counting_handler(batch_size=4, batch_wait=2.0), given)
    assert [results["batch_size"] for results in got] == [4, 4, 4, 4, 4, 4, 4, 4, 2, 2]
    for atoms, results in zip(given, got, strict=True):
        assert_emt(atoms, results)


def test_every_reply_says_how_long_the_worker_took_for_it():
    emt = BUILTIN_MODELS["emt"].definition()
    handle = request_handler(EMT(), "emt", emt)
    chunk = read_chunk_reply(handle([bytes(f) for f in encode_chunk(structures(3), PROPERTIES)]))
    one = read_reply(handle([bytes(f) for f in encode_request(structures(1)[0], PROPERTIES)]))
    for computed in (chunk, one):
        assert computed.seconds is not None and 0 < computed.seconds < 60
