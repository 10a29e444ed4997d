"""Tests of the ASE payload codec: round trips, exactness, zero copy, rejection of bad
frames, and the byte-exact vectors in protocol/vectors/ase_payload.json both ways."""

from __future__ import annotations

import json
import pickle
import re
import struct
from typing import Any

import numpy as np
import pytest
import zmq
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PROJECT

from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.payload import (
    FORMAT_VERSION,
    WIRE_DTYPES,
    PayloadError,
    RemoteCalculationError,
    decode_chunk_reply,
    decode_reply,
    decode_request,
    encode_chunk,
    encode_chunk_results,
    encode_request,
    encode_results,
    read_request,
)

VECTORS = PROJECT / "protocol" / "vectors" / "ase_payload.json"


def as_bytes(frames: list[Any]) -> list[bytes]:
    return [bytes(frame) for frame in frames]


def version1_error(kind: str, message: str, traceback: str = "",
                   worker: str | None = None) -> list[bytes]:
    """An error reply as workers of payload version 1 sent them (decoded, no longer sent)."""
    error = {"type": kind, "message": message, "traceback": traceback}
    if worker is not None:
        error["worker"] = worker
    return [json.dumps({"v": 1, "ok": False, "error": error}, separators=(",", ":")).encode()]


def random_atoms(seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 9))
    atoms = Atoms(
        numbers=rng.integers(1, 95, count),
        positions=rng.normal(size=(count, 3)) * 5,
        cell=rng.normal(size=(3, 3)) * 4,
        pbc=rng.integers(0, 2, 3).astype(bool),
    )
    if rng.random() < 0.5:
        shape = (count,) if rng.random() < 0.5 else (count, 3)
        atoms.set_initial_magnetic_moments(rng.normal(size=shape))
    if rng.random() < 0.5:
        atoms.set_initial_charges(rng.normal(size=count))
    atoms.info.update(charge=int(rng.integers(-2, 3)), spin=int(rng.integers(1, 4)))
    return atoms


def assert_same_atoms(left: Atoms, right: Atoms) -> None:
    assert left.numbers.tobytes() == right.numbers.tobytes()
    assert left.positions.tobytes() == right.positions.tobytes()
    assert left.cell.array.tobytes() == right.cell.array.tobytes()
    assert left.pbc.tolist() == right.pbc.tolist()
    for name in ("initial_magmoms", "initial_charges"):
        assert (name in left.arrays) == (name in right.arrays)
        if name in left.arrays:
            assert left.arrays[name].tobytes() == right.arrays[name].tobytes()
    assert left.info == right.info


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", range(25))
def test_request_round_trip(seed: int) -> None:
    atoms = random_atoms(seed)
    decoded, properties = decode_request(as_bytes(encode_request(atoms, ["energy", "forces"])))
    assert properties == ["energy", "forces"]
    assert_same_atoms(atoms, decoded)


def test_request_carries_only_scalar_info() -> None:
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.info.update(
        charge=-1, spin=2, label="x", flag=True, T=300.5, n=np.int32(4), f=np.float32(0.1),
        b=np.bool_(True), nan=float("nan"), lst=[1], arr=np.zeros(3), none=None, d={"a": 1},
    )  # fmt: skip
    atoms.info[7] = "key is not a string"
    decoded, _ = decode_request(encode_request(atoms, []))
    assert decoded.info == {
        "charge": -1, "spin": 2, "label": "x", "flag": True, "T": 300.5, "n": 4,
        "f": float(np.float32(0.1)), "b": True,
    }  # fmt: skip
    assert type(decoded.info["n"]) is int and type(decoded.info["b"]) is bool


def test_request_rejects_single_string_properties() -> None:
    with pytest.raises(TypeError):
        encode_request(Atoms("H"), "energy")


def test_request_frames_view_atoms_memory() -> None:
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    frames = encode_request(atoms, ["energy"])
    positions = np.frombuffer(frames[2], dtype=np.uint8)
    assert np.shares_memory(positions, atoms.positions)


def test_results_round_trip_every_kind() -> None:
    rng = np.random.default_rng(1)
    results = {
        "energy": -12.5, "free_energy": np.float64(-12.25), "magmom": np.float32(1.5),
        "natoms": 3, "converged": True, "flag": np.bool_(False), "method": "mace",
        "forces": rng.normal(size=(3, 3)), "stress": rng.normal(size=6),
        "stresses": rng.normal(size=(3, 6)), "energies": rng.normal(size=1),
        "charges": rng.normal(size=3).astype(np.float32), "dipole": [0.5, 0.0, -0.5],
        "counts": np.arange(4, dtype=np.int32), "mask": np.array([True, False]),
        "u8": np.arange(3, dtype=np.uint64), "cplx": np.array([1 + 2j, 3 - 4j]),
        "empty": np.zeros((0, 3)),
    }  # fmt: skip
    decoded = decode_reply(as_bytes(encode_results(results)))
    assert list(decoded) == list(results)
    for name, value in results.items():
        expected = np.asarray(value)
        got = np.asarray(decoded[name])
        assert got.dtype == expected.dtype.newbyteorder("<") or got.dtype == np.float64, name
        assert got.shape == expected.shape, name
        assert got.tobytes() == expected.astype(got.dtype).tobytes(), name
    assert type(decoded["natoms"]) is int and type(decoded["converged"]) is bool
    assert type(decoded["energy"]) is float and decoded["method"] == "mace"


def test_results_widen_and_byteswap() -> None:
    results = {
        "half": np.array([1.5, -2.0], dtype=np.float16),
        "c64": np.array([1 + 1j], dtype=np.complex64),
        "big": np.array([[1.25, -3.5]], dtype=">f8"),
        "bigint": np.array([1, -2], dtype=">i4"),
        "strided": np.arange(12.0).reshape(3, 4)[:, ::2],
    }
    frames = encode_results(results)
    header = json.loads(bytes(frames[0]))
    dtypes = {spec["name"]: spec["dtype"] for spec in header["arrays"]}
    assert dtypes == {"half": "<f4", "c64": "<c16", "big": "<f8", "bigint": "<i4", "strided": "<f8"}
    assert bytes(frames[3]) == struct.pack("<2d", 1.25, -3.5)
    decoded = decode_reply(frames)
    for name, value in results.items():
        np.testing.assert_array_equal(decoded[name], value)


def test_results_skip_what_cannot_travel() -> None:
    results = {
        "energy": 1.0, "none": None, "dict": {"a": 1}, "text": np.array(["a"]),
        "objects": np.array([None, 1], dtype=object), "ragged": [[1], [1, 2]], 3: 1.0,
    }  # fmt: skip
    assert decode_reply(encode_results(results)) == {"energy": 1.0}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -np.inf, np.float32("nan")])
def test_non_finite_scalar_travels_as_0d_array(value: float) -> None:
    frames = encode_results({"energy": value})
    header = json.loads(bytes(frames[0]))
    assert header["scalars"] == {}
    dtype = np.asarray(value).dtype.str
    assert header["arrays"] == [{"name": "energy", "dtype": dtype, "shape": []}]
    energy = decode_reply(frames)["energy"]
    assert type(energy) is float
    assert struct.pack("<d", energy) == struct.pack("<d", value) or np.isnan(energy)


def test_complex_scalar_travels_as_0d_array() -> None:
    assert decode_reply(encode_results({"z": np.complex128(1 - 2j)})) == {"z": 1 - 2j}


def test_error_reply_raises_remote_error() -> None:
    frames = version1_error("ValueError", "bad cell", "Traceback ...\nValueError: bad cell\n")
    with pytest.raises(RemoteCalculationError) as info:
        decode_reply(frames)
    error = info.value
    assert isinstance(error, CalculationFailed)
    assert (error.error_type, error.remote_message) == ("ValueError", "bad cell")
    assert error.remote_traceback.endswith("bad cell\n")
    assert error.model is None and error.worker is None
    assert str(error) == "ValueError: bad cell"


def test_remote_error_names_model_and_worker() -> None:
    error = RemoteCalculationError("KeyError", "'x'")
    error.model = "mace-mp"
    assert str(error) == "KeyError: 'x' (model 'mace-mp')"
    error.worker = "w-1"
    assert str(error) == "KeyError: 'x' (model 'mace-mp', worker 'w-1')"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.error_type, copy.model, copy.worker, str(copy)) == (
        "KeyError", "mace-mp", "w-1", str(error)
    )  # fmt: skip


def test_error_reply_carries_the_worker_that_failed() -> None:
    with pytest.raises(RemoteCalculationError) as info:
        decode_reply(version1_error("ValueError", "bad cell", worker="node7:4242"))
    assert info.value.worker == "node7:4242"
    assert str(info.value) == "ValueError: bad cell (worker 'node7:4242')"


def test_error_reply_without_traceback_key() -> None:
    header = {"v": 1, "ok": False, "error": {"type": "E", "message": "m"}}
    with pytest.raises(RemoteCalculationError) as info:
        decode_reply([json.dumps(header).encode()])
    assert info.value.remote_traceback == ""


def test_unknown_header_keys_and_request_arrays_are_ignored() -> None:
    frames = as_bytes(encode_request(Atoms("H"), ["energy"]))
    header = json.loads(frames[0])
    header["future"] = {"anything": [1, 2]}
    header["arrays"].append({"name": "velocities", "dtype": "<f8", "shape": [1, 3], "x": 1})
    frames = [json.dumps(header).encode(), *frames[1:], bytes(24)]
    atoms, _ = decode_request(frames)
    assert atoms.get_chemical_symbols() == ["H"] and "velocities" not in atoms.arrays


def test_decoder_accepts_any_json_layout() -> None:
    frames = as_bytes(encode_results({"energy": 2.5, "forces": np.ones((1, 3))}))
    header = json.loads(frames[0])
    text = json.dumps(dict(reversed(header.items())), indent=4)
    assert decode_reply([text.encode(), frames[1]])["energy"] == 2.5


# --------------------------------------------------------------------------- exactness


def test_floats_are_bitwise_exact() -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**64, size=300, dtype=np.uint64)
    values = bits.view(np.float64)
    values = values[np.isfinite(values)]
    specials = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1]
    values = np.concatenate([values, specials])
    results = {f"s{i}": float(value) for i, value in enumerate(values)}
    results["array"] = values.copy()
    decoded = decode_reply(as_bytes(encode_results(results)))
    assert decoded["array"].tobytes() == values.tobytes()
    for i, value in enumerate(values):
        assert struct.pack("<d", decoded[f"s{i}"]) == struct.pack("<d", value)


def test_positions_are_bitwise_exact() -> None:
    rng = np.random.default_rng(8)
    positions = rng.integers(0, 2**64, size=(50, 3), dtype=np.uint64).view(np.float64)
    positions[~np.isfinite(positions)] = -0.0
    atoms = Atoms(numbers=np.ones(50, int), positions=positions)
    decoded, _ = decode_request(encode_request(atoms, []))
    assert decoded.positions.tobytes() == positions.tobytes()


# --------------------------------------------------------------------------- zero copy


def test_reply_arrays_are_read_only_views_of_the_frames() -> None:
    forces = np.arange(12.0).reshape(4, 3)
    frames: list[Any] = [bytearray(frame) for frame in encode_results({"forces": forces})]
    decoded = decode_reply(frames)["forces"]
    assert np.shares_memory(decoded, np.frombuffer(frames[1], dtype=np.uint8))
    assert not decoded.flags.writeable
    np.testing.assert_array_equal(decoded, forces)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, zmq.Frame])
def test_frames_of_any_buffer_type(wrap: Any) -> None:
    frames = [wrap(bytes(frame)) for frame in encode_results({"stress": np.ones(6), "e": 1.0})]
    decoded = decode_reply(frames)
    assert decoded["e"] == 1.0 and decoded["stress"].tolist() == [1.0] * 6
    atoms, _ = decode_request([wrap(bytes(f)) for f in encode_request(Atoms("He"), [])])
    assert atoms.get_chemical_symbols() == ["He"]


def test_zmq_frame_arrays_share_its_memory() -> None:
    frames = [zmq.Frame(bytes(frame)) for frame in encode_results({"f": np.ones((2, 3))})]
    decoded = decode_reply(frames)["f"]
    assert np.shares_memory(decoded, np.frombuffer(frames[1], dtype=np.uint8))


# --------------------------------------------------------------------------- malformed input


def request_frames() -> tuple[dict[str, Any], list[bytes]]:
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], pbc=[True, False, True])
    atoms.set_initial_magnetic_moments([1.0, -1.0])
    frames = as_bytes(encode_request(atoms, ["energy"]))
    return json.loads(frames[0]), frames[1:]


def with_header(header: dict[str, Any], arrays: list[bytes]) -> list[bytes]:
    return [json.dumps(header).encode(), *arrays]


def spec_of(header: dict[str, Any], name: str) -> dict[str, Any]:
    return next(spec for spec in header["arrays"] if spec["name"] == name)


def set_spec(target: str, **changes: Any):
    def mutate(header: dict[str, Any], arrays: list[bytes]) -> list[bytes]:
        spec_of(header, target).update(changes)
        return with_header(header, arrays)

    return mutate


def set_key(key: str, value: Any):
    def mutate(header: dict[str, Any], arrays: list[bytes]) -> list[bytes]:
        header[key] = value
        return with_header(header, arrays)

    return mutate


def drop_array(name: str):
    def mutate(header: dict[str, Any], arrays: list[bytes]) -> list[bytes]:
        index = header["arrays"].index(spec_of(header, name))
        del header["arrays"][index]
        return with_header(header, arrays[:index] + arrays[index + 1 :])

    return mutate


def replace_array(name: str, dtype: str, data: np.ndarray):
    def mutate(header: dict[str, Any], arrays: list[bytes]) -> list[bytes]:
        spec = spec_of(header, name)
        index = header["arrays"].index(spec)
        spec.update(dtype=dtype, shape=list(data.shape))
        arrays[index] = data.astype(dtype).tobytes()
        return with_header(header, arrays)

    return mutate


REQUEST_MUTATIONS = {
    "no frames": (lambda h, a: [], "no frames"),
    "not utf-8": (lambda h, a: [b"\xff\xfe{}", *a], "not UTF-8 JSON"),
    "not json": (lambda h, a: [b"{'v': 1}", *a], "not UTF-8 JSON"),
    "not an object": (lambda h, a: [b"[1]", *a], "must be a JSON object"),
    "NaN constant": (lambda h, a: [b'{"v":1,"x":NaN}', *a], "NaN is not allowed"),
    "deep nesting": (lambda h, a: [b"[" * 100000 + b"]" * 100000, *a], "not UTF-8 JSON"),
    "version missing": (set_key("v", None), "'v'"),
    "version 3": (set_key("v", 3), "unsupported payload version 3"),
    "version true": (set_key("v", True), "'v'"),
    "version float": (set_key("v", 1.0), "'v'"),
    "arrays not a list": (set_key("arrays", {}), "'arrays' must be a list"),
    "array spec not object": (set_key("arrays", [1]), "arrays[0] must be an object"),
    "array without name": (set_key("arrays", [{"dtype": "<f8", "shape": []}]), "'name'"),
    "big-endian dtype": (set_spec("positions", dtype=">f8"), "dtype '>f8' is not allowed"),
    "half dtype": (set_spec("positions", dtype="<f2"), "'<f2' is not allowed"),
    "object dtype": (set_spec("positions", dtype="|O"), "'|O' is not allowed"),
    "non-canonical dtype": (set_spec("numbers", dtype="<i1"), "'<i1' is not allowed"),
    "dtype not a string": (set_spec("cell", dtype=8), "is not allowed"),
    "shape not a list": (set_spec("cell", shape="3,3"), "shape must be a list"),
    "negative size": (set_spec("cell", shape=[-3, -3]), "non-negative integers"),
    "bool size": (set_spec("pbc", shape=[True]), "non-negative integers"),
    "float size": (set_spec("pbc", shape=[3.0]), "non-negative integers"),
    "too many dims": (set_spec("pbc", shape=[1] * 33), "at most 32"),
    "huge empty shape": (set_spec("pbc", shape=[0, 2**62]), "too large"),
    "byte length": (set_spec("positions", shape=[2, 2]), "48 bytes, expected 32"),
    "too few frames": (lambda h, a: with_header(h, a[:-1]), "5 arrays but 4 array frames"),
    "too many frames": (lambda h, a: with_header(h, [*a, b""]), "5 arrays but 6 array frames"),
    "duplicate name": (set_spec("cell", name="positions"), "duplicate array names"),
    "numbers missing": (drop_array("numbers"), "'numbers' is missing"),
    "positions missing": (drop_array("positions"), "'positions' is missing"),
    "cell missing": (drop_array("cell"), "'cell' is missing"),
    "pbc missing": (drop_array("pbc"), "'pbc' is missing"),
    "numbers float": (replace_array("numbers", "<f8", np.ones(2)), "1-d integer"),
    "numbers 2-d": (replace_array("numbers", "<i8", np.ones((2, 1))), "1-d integer"),
    "numbers too big": (replace_array("numbers", "<i8", np.array([1, 119])), "0..118"),
    "numbers negative": (replace_array("numbers", "<i8", np.array([-1, 1])), "0..118"),
    "positions int": (replace_array("positions", "<i8", np.ones((2, 3))), "not allowed here"),
    "positions shape": (replace_array("positions", "<f8", np.ones((3, 3))), "expected [2, 3]"),
    "cell shape": (replace_array("cell", "<f8", np.ones(9)), "expected [3, 3]"),
    "cell NaN": (replace_array("cell", "<f8", np.full((3, 3), np.nan)), "'cell': values must"),
    "positions inf": (replace_array("positions", "<f4", np.full((2, 3), np.inf)), "finite"),
    "magmoms NaN": (replace_array("initial_magmoms", "<f8", np.array([0, np.nan])), "finite"),
    "pbc shape": (replace_array("pbc", "|b1", np.ones(2)), "expected [3]"),
    "pbc wide int": (replace_array("pbc", "<u2", np.ones(3)), "|b1 or |u1"),
    "pbc float": (replace_array("pbc", "<f8", np.ones(3)), "not allowed here"),
    "magmoms shape": (replace_array("initial_magmoms", "<f8", np.ones(3)), "[2] or [2, 3]"),
    "properties not list": (set_key("properties", "energy"), "'properties'"),
    "property not string": (set_key("properties", ["energy", 1]), "'properties'"),
    "info not object": (set_key("info", [1]), "'info' must be an object"),
    "info value list": (set_key("info", {"charge": [0]}), "info['charge']"),
    "info value null": (set_key("info", {"spin": None}), "info['spin']"),
}  # fmt: skip


@pytest.mark.parametrize("case", REQUEST_MUTATIONS, ids=str)
def test_malformed_request(case: str) -> None:
    mutate, message = REQUEST_MUTATIONS[case]
    header, arrays = request_frames()
    with pytest.raises(PayloadError, match=re.escape(message)):
        decode_request(mutate(header, arrays))


def test_pbc_may_be_uint8_nonzero_meaning_periodic() -> None:
    header, arrays = request_frames()
    frames = replace_array("pbc", "|u1", np.array([2, 0, 255]))(header, arrays)
    assert decode_request(frames)[0].pbc.tolist() == [True, False, True]


def test_bool_bytes_must_be_zero_or_one() -> None:
    header, arrays = request_frames()
    arrays[3] = b"\x01\x02\x00"
    with pytest.raises(PayloadError, match="booleans must be bytes 0 or 1"):
        decode_request(with_header(header, arrays))


def test_non_buffer_frame() -> None:
    header, arrays = request_frames()
    with pytest.raises(PayloadError, match="frame 1 is not a contiguous buffer"):
        decode_request([with_header(header, arrays)[0], "text", *arrays[1:]])
    with pytest.raises(PayloadError, match="frame 0"):
        decode_reply([memoryview(b'{"v":1,"ok":true}  ')[::2]])


def reply_frames() -> tuple[dict[str, Any], list[bytes]]:
    frames = as_bytes(encode_results({"energy": 1.0, "forces": np.ones((2, 3))}))
    return json.loads(frames[0]), frames[1:]


REPLY_MUTATIONS = {
    "ok missing": (set_key("ok", None), "'ok' must be true or false"),
    "ok number": (set_key("ok", 1), "'ok' must be true or false"),
    "scalars not object": (set_key("scalars", [1.0]), "'scalars' must be an object"),
    "scalar list": (set_key("scalars", {"energy": [1.0]}), "scalars['energy']"),
    "scalar null": (set_key("scalars", {"energy": None}), "scalars['energy']"),
    "name clash": (set_key("scalars", {"forces": 1.0}), "both a scalar and an array"),
    "byte length": (set_spec("forces", shape=[3, 3]), "48 bytes, expected 72"),
    "extra frame": (lambda h, a: with_header(h, [*a, b"x"]), "1 arrays but 2 array frames"),
    "error not object": (
        lambda h, a: [b'{"v":1,"ok":false,"error":"boom"}'],
        "'error' must be an object",
    ),
    "error type missing": (
        lambda h, a: [b'{"v":1,"ok":false,"error":{"message":"m"}}'],
        "must be strings",
    ),
    "error traceback number": (
        lambda h, a: [b'{"v":1,"ok":false,"error":{"type":"E","message":"m","traceback":1}}'],
        "must be strings",
    ),
    "error with frames": (
        lambda h, a: [*version1_error("E", "m"), b"x"],
        "error reply: expected 1 frame, got 2",
    ),
}


@pytest.mark.parametrize("case", REPLY_MUTATIONS, ids=str)
def test_malformed_reply(case: str) -> None:
    mutate, message = REPLY_MUTATIONS[case]
    header, arrays = reply_frames()
    with pytest.raises(PayloadError, match=re.escape(message)):
        decode_reply(mutate(header, arrays))


def test_payload_error_is_a_value_error() -> None:
    assert issubclass(PayloadError, ValueError)
    assert FORMAT_VERSION == 1


# --------------------------------------------------------------------------- test vectors


def load_vectors() -> list[dict[str, Any]]:
    return json.loads(VECTORS.read_text())["cases"]


def vector_atoms(meaning: dict[str, Any]) -> Atoms:
    atoms = Atoms(
        numbers=np.array(meaning["numbers"], dtype="<i8"),
        positions=np.array(meaning["positions"], dtype="<f8").reshape(-1, 3),
        cell=meaning["cell"],
        pbc=meaning["pbc"],
        info=meaning["info"],
    )
    if "initial_magmoms" in meaning:
        atoms.set_initial_magnetic_moments(meaning["initial_magmoms"])
    if "initial_charges" in meaning:
        atoms.set_initial_charges(meaning["initial_charges"])
    return atoms


def vector_results(meaning: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = dict(meaning["scalars"])
    for name, array in meaning["arrays"].items():
        results[name] = np.array(array["data"], dtype=array["dtype"]).reshape(array["shape"])
    return results


def vector_model(meaning: dict[str, Any]) -> Definition | None:
    model = meaning.get("model")
    return Definition(model["definition"]) if model else None


def encode_vector(case: dict[str, Any]) -> list[Any]:
    meaning = case["meaning"]
    if case["kind"] == "request":
        return encode_request(vector_atoms(meaning), meaning["properties"],
                              vector_model(meaning))
    if case["kind"] == "chunk-request":
        return encode_chunk([vector_atoms(each) for each in meaning["structures"]],
                            meaning["properties"], vector_model(meaning))
    if case["kind"] == "chunk-reply":
        return encode_chunk_results([
            ValueError(entry["error"]["message"]) if "error" in entry else
            vector_results(entry) for entry in meaning["results"]])
    return encode_results(vector_results(meaning))


def test_vectors_cover_the_required_cases() -> None:
    kinds = [case["kind"] for case in load_vectors()]
    assert kinds.count("request") >= 2 and "reply" in kinds and "error" in kinds
    assert kinds.count("chunk-request") >= 2 and "chunk-reply" in kinds


def assert_model(model: Any, meaning: dict[str, Any]) -> None:
    expected = meaning.get("model")
    assert (model and model._asdict()) == (expected and {
        "fingerprint": expected["fingerprint"], "identity": expected["definition"]})


def assert_results(decoded: dict[str, Any], meaning: dict[str, Any]) -> None:
    expected = vector_results(meaning)
    assert list(decoded) == list(expected)
    for name, value in expected.items():
        assert np.asarray(decoded[name]).dtype == np.asarray(value).dtype
        assert np.asarray(decoded[name]).tobytes() == np.asarray(value).tobytes()


@pytest.mark.parametrize("case", [case for case in load_vectors() if case["kind"] != "error"],
                         ids=lambda case: case["name"])
def test_vector_encodes_byte_for_byte(case: dict[str, Any]) -> None:
    """Error replies are decoded only: workers now report failures as MDP worker errors."""
    frames = as_bytes(encode_vector(case))
    assert [frame.hex() for frame in frames] == case["frames"]
    assert frames[0].decode("utf-8") == case["header_text"]


@pytest.mark.parametrize("case", load_vectors(), ids=lambda case: case["name"])
def test_vector_decodes_to_its_meaning(case: dict[str, Any]) -> None:
    frames = [bytes.fromhex(frame) for frame in case["frames"]]
    meaning = case["meaning"]
    if case["kind"] == "request":
        [atoms], properties, model, chunk = read_request(frames)[:4]
        assert not chunk
        assert properties == meaning["properties"]
        assert_same_atoms(atoms, vector_atoms(meaning))
        assert_model(model, meaning)
    elif case["kind"] == "chunk-request":
        structures, properties, model, chunk = read_request(frames)[:4]
        assert chunk and properties == meaning["properties"]
        for atoms, expected in zip(structures, meaning["structures"], strict=True):
            assert_same_atoms(atoms, vector_atoms(expected))
        assert_model(model, meaning)
    elif case["kind"] == "reply":
        assert_results(decode_reply(frames), meaning)
    elif case["kind"] == "chunk-reply":
        for decoded, entry in zip(decode_chunk_reply(frames), meaning["results"], strict=True):
            if "error" in entry:
                assert decoded._asdict() == {"error_type": entry["error"]["type"],
                                             "message": entry["error"]["message"],
                                             "traceback": entry["error"]["traceback"]}
            else:
                assert_results(decoded, entry)
    else:
        with pytest.raises(RemoteCalculationError) as info:
            decode_reply(frames)
        error = meaning["error"]
        assert info.value.error_type == error["type"]
        assert info.value.remote_message == error["message"]
        assert info.value.remote_traceback == error["traceback"]


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
dtypes = st.sampled_from(["|b1", "<i8", "<f8", "|u1", "<c16", ">f8", "<f2", "|O", 3])
names = st.sampled_from(["numbers", "positions", "cell", "pbc", "initial_magmoms", "forces"])
shapes = st.lists(st.integers(-1, 4), max_size=3) | json_values
specs = st.fixed_dictionaries({"name": names | json_values, "dtype": dtypes, "shape": shapes})
headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 2, True, "1", None]),
        "ok": st.booleans() | json_values,
        "arrays": st.lists(specs, max_size=6) | json_values,
        "properties": st.lists(st.text(), max_size=3) | json_values,
        "info": st.dictionaries(st.text(), json_scalars, max_size=3) | json_values,
        "scalars": st.dictionaries(names, json_scalars, max_size=3) | json_values,
        "error": json_values,
        "counts": st.lists(st.integers(-1, 4), max_size=3) | json_values,
        "results": st.lists(st.fixed_dictionaries({}, optional={
            "scalars": st.dictionaries(names, json_scalars, max_size=2) | json_values,
            "arrays": st.lists(specs, max_size=2) | json_values,
            "error": json_values}), max_size=3) | json_values,
    },
)
DECODERS = (read_request, decode_reply, decode_chunk_reply)
header_frames = headers.map(lambda h: json.dumps(h).encode()) | st.binary(max_size=40)
array_frames = st.binary(max_size=80) | st.sampled_from([bytes(8), bytes(24), b"\x01" * 3])
frame_lists = st.tuples(header_frames, st.lists(array_frames, max_size=6)).map(
    lambda pair: [pair[0], *pair[1]]
) | st.lists(st.binary(max_size=30), max_size=3)


@FUZZ
@given(frame_lists)
def test_random_frames_raise_only_payload_errors(frames: list[bytes]) -> None:
    for decode in DECODERS:
        try:
            decode(frames)
        except (PayloadError, RemoteCalculationError):
            pass


def plausible_specs(count: int) -> dict[str, tuple[list[str], list[list[int]]]]:
    return {
        "numbers": (["<i8", "|u1", "<u4"], [[count]]),
        "positions": (["<f8", "<f4"], [[count, 3]]),
        "cell": (["<f8", "<f4"], [[3, 3]]),
        "pbc": (["|b1", "|u1"], [[3]]),
        "initial_magmoms": (["<f8"], [[count], [count, 3]]),
        "initial_charges": (["<f4"], [[count]]),
    }


@st.composite
def well_framed_arrays(draw: st.DrawFn) -> list[bytes]:
    """Headers whose frames all have the right length, mostly with plausible dtypes and
    shapes, so decoding gets past the framing and into the checks on values."""
    count = draw(st.integers(0, 3))
    specs, frames = [], []
    for name, (good_dtypes, good_shapes) in plausible_specs(count).items():
        if name.startswith("initial") and draw(st.booleans()):
            continue
        dtype = np.dtype(draw(st.sampled_from(good_dtypes) | st.sampled_from(sorted(WIRE_DTYPES))))
        shape = draw(st.sampled_from(good_shapes) | st.sampled_from([[], [1], [3], [count, 3]]))
        size = dtype.itemsize * int(np.prod(shape))
        specs.append({"name": name, "dtype": dtype.str, "shape": shape})
        frames.append(draw(st.binary(min_size=size, max_size=size)))
    header = {"v": 1, "ok": draw(st.booleans()), "arrays": specs}
    if draw(st.booleans()):  # a chunk of one structure, or of two splitting the atoms
        header.update(v=2, counts=draw(st.sampled_from([[count], [0, count], [count, 1]])))
    return [json.dumps(header).encode(), *frames]


@FUZZ
@given(well_framed_arrays())
def test_well_framed_random_arrays_raise_only_payload_errors(frames: list[bytes]) -> None:
    for decode in DECODERS:
        try:
            decode(frames)
        except (PayloadError, RemoteCalculationError):
            pass


def _valid_payloads() -> list[tuple[Any, list[bytes]]]:
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", cubic=True)
    atoms.set_initial_magnetic_moments([1.0] * len(atoms))
    atoms.info["charge"] = 1
    request = as_bytes(encode_request(atoms, ["energy", "forces"]))
    atoms.calc = EMT()
    atoms.get_stress()
    reply = as_bytes(encode_results(atoms.calc.results))
    failed = version1_error("ValueError", "bad", "Traceback ...", "host:1")
    return [(decode_request, request), (decode_reply, reply), (decode_reply, failed)]


VALID = _valid_payloads()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else []
    for key, item in items:
        found += _paths(item, (*prefix, key))
    return found


def _replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    inner = copy
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = new
    return copy


@st.composite
def mutated_payloads(draw: st.DrawFn) -> tuple[Any, list[bytes]]:
    """A valid request or reply with a few header values replaced by any JSON (lists and
    objects where strings or numbers belong, ...), and maybe a frame lost or added."""
    decode, frames = draw(st.sampled_from(VALID))
    header = json.loads(frames[0])
    for _ in range(draw(st.integers(1, 3))):
        header = _replaced(header, draw(st.sampled_from(_paths(header))), draw(json_values))
    arrays = list(frames[1:])
    change = draw(st.sampled_from(["none", "drop", "add", "cut"]))
    if change == "drop" and arrays:
        arrays.pop(draw(st.integers(0, len(arrays) - 1)))
    elif change == "add":
        arrays.append(draw(array_frames))
    elif change == "cut" and arrays:
        arrays[-1] = arrays[-1][: len(arrays[-1]) // 2]
    return decode, [json.dumps(header).encode(), *arrays]


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_payloads())
def test_mutated_payloads_raise_only_payload_errors(case: tuple[Any, list[bytes]]) -> None:
    decode, frames = case
    try:
        decode(frames)
    except (PayloadError, RemoteCalculationError):
        pass


@pytest.mark.parametrize("header", [
    b'{"v":1,"arrays":[{"name":"numbers","dtype":[1],"shape":[1]}]}',
    b'{"v":1,"arrays":[{"name":"numbers","dtype":{"a":1},"shape":[1]}]}',
    b'{"v":1,"properties":[],"charge":' + b"9" * 5000 + b"}",
], ids=["list-dtype", "object-dtype", "5000-digit-integer"])
def test_unhashable_dtypes_and_huge_integers_are_payload_errors(header: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_request([header, bytes(8)])

