"""The several-structures form of the ASE payload (version 2): a chunk goes out and comes
back whole, a structure that breaks the format or fails does so alone, in its place."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from mlipx_serve.errors import PayloadError
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.payload import (
    RemoteFailure,
    chunk_key,
    decode_chunk_reply,
    decode_reply,
    decode_request,
    encode_chunk,
    encode_chunk_results,
    encode_request,
    encode_results,
    read_chunk_reply,
    read_reply,
    read_request,
    structures_in,
    worker_report,
)

pytestmark = pytest.mark.timeout(10)


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(frame) for frame in frames]


def structures() -> list[Atoms]:
    cu = bulk("Cu", cubic=True)
    cu.rattle(0.05, seed=1)
    water = molecule("H2O")
    water.info.update(charge=-1, spin=2, label="w")
    slab = bulk("Al", cubic=True) * (2, 1, 1)
    slab.pbc = [True, True, False]
    return [cu, water, slab, Atoms()]  # an empty one too: zero atoms is a structure


def assert_same(decoded: Atoms, given: Atoms) -> None:
    assert decoded.numbers.tolist() == given.numbers.tolist()
    np.testing.assert_array_equal(decoded.positions, given.positions)
    np.testing.assert_array_equal(decoded.cell.array, given.cell.array)
    assert decoded.pbc.tolist() == given.pbc.tolist()
    assert decoded.info == given.info
    for name in ("initial_magmoms", "initial_charges"):
        assert (name in decoded.arrays) == (name in given.arrays)
        if name in given.arrays:
            np.testing.assert_array_equal(decoded.arrays[name], given.arrays[name])


def test_a_chunk_goes_out_and_comes_back_whole():
    given = structures()
    lj = Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": 2.3})
    frames = as_bytes(encode_chunk(given, ["energy", "forces"], lj))
    assert len(frames) == 5  # a header and four stacked arrays, however many structures
    decoded, properties, model, chunk = read_request(frames)[:4]
    assert chunk and properties == ["energy", "forces"] and model.fingerprint == lj.fingerprint
    for got, atoms in zip(decoded, given, strict=True):
        assert_same(got, atoms)


def test_per_atom_arrays_travel_stacked_and_structures_that_differ_in_them_do_not_mix():
    given = [bulk("Fe", cubic=True) for _ in range(3)]
    for seed, atoms in enumerate(given):
        atoms.set_initial_magnetic_moments(np.full(len(atoms), 2.0 + seed))
        atoms.set_initial_charges(np.full(len(atoms), 0.5 * seed))
    decoded = read_request(as_bytes(encode_chunk(given, ["energy"]))).structures
    for got, atoms in zip(decoded, given, strict=True):
        assert_same(got, atoms)
    plain = bulk("Fe", cubic=True)
    assert chunk_key(plain) != chunk_key(given[0])
    with pytest.raises(ValueError, match="same arrays"):
        encode_chunk([given[0], plain], ["energy"])


def test_a_malformed_structure_in_a_chunk_is_an_error_in_its_place():
    given = structures()[:3]
    frames = as_bytes(encode_chunk(given, ["energy"]))
    positions = np.frombuffer(frames[2], dtype="<f8").copy()
    positions[len(given[0]) * 3] = np.nan  # the first coordinate of the second structure
    frames[2] = positions.tobytes()
    first, broken, third = read_request(frames).structures
    assert_same(first, given[0])
    assert_same(third, given[2])
    assert isinstance(broken, PayloadError)
    assert "structure 1 of the chunk" in str(broken) and "finite" in str(broken)


@pytest.mark.parametrize("mutate, says", [
    (lambda header: header.update(counts=[8, 3]), "must have 11 rows"),
    (lambda header: header.update(counts="8"), "'counts' must be a list"),
    (lambda header: header.update(counts=[]), "'counts' must be a list"),
    (lambda header: header.update(info={}), "'info' must be a list"),
])
def test_a_chunk_whose_arrays_do_not_add_up_is_refused_whole(mutate, says):

    frames = as_bytes(encode_chunk(structures()[:2], ["energy"]))
    header = json.loads(frames[0])
    mutate(header)
    with pytest.raises(PayloadError, match=says):
        read_request([json.dumps(header).encode(), *frames[1:]])


def test_results_and_failures_come_back_each_in_its_place():
    results = [{"energy": -1.5, "forces": np.arange(6.0).reshape(2, 3), "stress": np.ones(6)},
               ValueError("cell is singular"),
               {"energy": 2.0, "converged": True}]
    frames = as_bytes(encode_chunk_results(results))
    first, failed, third = decode_chunk_reply(frames)
    assert first["energy"] == -1.5
    np.testing.assert_array_equal(first["forces"], results[0]["forces"])
    np.testing.assert_array_equal(first["stress"], results[0]["stress"])
    assert isinstance(failed, RemoteFailure)
    assert (failed.error_type, failed.message) == ("ValueError", "cell is singular")
    assert third == {"energy": 2.0, "converged": True}


def test_the_one_structure_form_is_read_as_before_and_not_taken_for_a_chunk():
    atoms = structures()[0]
    decoded, properties = decode_request(as_bytes(encode_request(atoms, ["energy"])))
    assert_same(decoded, atoms)
    with pytest.raises(PayloadError, match="read it with read_request"):
        decode_request(as_bytes(encode_chunk([atoms, atoms], ["energy"])))
    with pytest.raises(PayloadError, match="unsupported payload version 2"):
        decode_reply(as_bytes(encode_chunk_results([{"energy": 1.0}])))


@pytest.mark.parametrize("chunk", [False, True], ids=["one", "chunk"])
def test_a_reply_says_how_long_the_worker_took_and_a_strange_time_is_no_time(chunk):
    encode, read = (encode_chunk_results, read_chunk_reply) if chunk else \
        (encode_results, read_reply)
    results = [{"energy": 1.0}] if chunk else {"energy": 1.0}
    assert read(as_bytes(encode(results, 0.0125))).seconds == 0.0125
    untimed = as_bytes(encode(results))
    assert read(untimed).seconds is None and "seconds" not in json.loads(untimed[0])
    for strange in ("soon", -1.0, True, None):
        header = json.loads(untimed[0]) | {"seconds": strange}
        computed = read([json.dumps(header).encode(), *untimed[1:]])
        assert computed.seconds is None and computed.results == results


def test_a_broker_weighs_a_chunk_in_structures_and_reads_what_the_worker_reports():
    assert structures_in(as_bytes(encode_chunk(structures(), ["energy"]))) == len(structures())
    assert structures_in(as_bytes(encode_request(bulk("Cu"), ["energy"]))) == 1
    assert structures_in([b"not a payload"]) == 1
    reply = encode_chunk_results([{"energy": 1.0, "error": 0.5}, ValueError("singular"),
                                  {"energy": 2.0}, RuntimeError("no")], seconds=0.25)
    assert worker_report(as_bytes(reply)) == (2, 0.25)
    assert worker_report(as_bytes(encode_chunk_results([{"error": 1.0}]))) == (0, None)
    assert worker_report(as_bytes(encode_results({"energy": 1.0}, seconds=1.5e-5))) == \
        (0, 1.5e-5)
    # a result that happens to be called "seconds" is not the worker's time
    assert worker_report(as_bytes(encode_results({"seconds": 3.0}))) == (0, None)
    for header in (b'{"results": "error"', b'{"v":1,"seconds":-1}', b'{"v":1,"seconds":nan}',
                   b'{"v":1,"seconds":1e999}', b""):
        assert worker_report([header]) == (0, None)
