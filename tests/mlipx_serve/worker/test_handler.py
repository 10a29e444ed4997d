"""A worker's check of every request: the model asked for, or none, is computed; any other
is refused naming the differences."""

from __future__ import annotations

from typing import Any

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mlipx_serve.errors import DefinitionMismatch
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.payload import decode_reply, encode_request
from mlipx_serve.worker.handler import request_handler

pytestmark = pytest.mark.timeout(30)


def lj(sigma: float = 2.3, **rest: Any) -> Definition:
    return Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": sigma}, **rest)


@pytest.fixture
def emt_handler():
    served = BUILTIN_MODELS["emt"].definition()
    calc = EMT()
    return request_handler(calc, "emt", served)


def test_a_request_for_another_model_is_refused_with_the_differences(emt_handler) -> None:
    frames = [bytes(frame) for frame in encode_request(bulk("Cu"), ["energy"], lj())]
    with pytest.raises(DefinitionMismatch) as info:
        emt_handler(frames)
    message = str(info.value)
    assert "this worker serves ase.calculators.emt:EMT" in message
    assert "kwargs.sigma: absent here, 2.3 asked" in message


def test_a_request_for_the_model_or_for_no_model_is_computed(emt_handler) -> None:
    atoms = bulk("Cu")
    emt = BUILTIN_MODELS["emt"].definition()
    for definition in (emt, Definition(emt.identity, name="unnamed"), None):
        frames = [bytes(f) for f in encode_request(atoms, ["energy"], definition)]
        reply = decode_reply([bytes(f) for f in emt_handler(frames)])
        assert reply["energy"] == pytest.approx(EMT().get_potential_energy(atoms.copy()),
                                                abs=1e-12)


def test_a_worker_without_a_definition_takes_requests_by_name_alone() -> None:
    handle = request_handler(EMT(), "emt", None)
    with pytest.raises(DefinitionMismatch, match="ask for it by name alone"):
        handle([bytes(f) for f in encode_request(bulk("Cu"), ["energy"], lj())])
    assert "energy" in decode_reply([bytes(f) for f in handle(
        [bytes(f) for f in encode_request(bulk("Cu"), ["energy"])])])

