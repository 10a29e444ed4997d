"""The ASE payload: atoms and calculator results as a JSON header plus raw array frames.

Nothing here touches a socket. Frames go in and out as lists of buffers, so the same codec
serves the worker, the calculator, the tests and the test-vector generator. Nothing from the
network is ever unpickled or evaluated: a header is plain JSON, an array is raw little-endian
bytes whose dtype comes from a short allow-list. The wire format is specified in
``protocol/ase-payload.md``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from mlipx_serve.errors import PayloadError, RemoteCalculationError
from mlipx_serve.wire.definition import Definition

__all__ = [
    "FORMAT_VERSION",
    "WIRE_DTYPES",
    "PayloadError",
    "RemoteCalculationError",
    "decode_reply",
    "decode_request",
    "read_request",
    "encode_request",
    "encode_results",
]

FORMAT_VERSION = 1

# Canonical numpy dtype strings allowed on the wire. One spelling per type keeps the check a
# plain set lookup and rules out big-endian, object, string and platform-dependent types.
WIRE_DTYPES = frozenset(
    {"|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f4", "<f8", "<c16"}
)

_DTYPES = {name: np.dtype(name) for name in WIRE_DTYPES}

MAX_NDIM = 32
_FINGERPRINT = re.compile("[0-9a-f]{64}")

# Per-atom arrays of atoms.arrays that travel with a request, besides numbers and positions.
OPTIONAL_PER_ATOM = ("initial_magmoms", "initial_charges")

Frame = Any  # bytes, bytearray, memoryview, zmq.Frame: anything with the buffer protocol
Spec = tuple[str, np.dtype, tuple[int, ...]]


# --------------------------------------------------------------------------- encoding


def encode_request(atoms: Atoms, properties: Iterable[str],
                   definition: Definition | None = None) -> list[bytes | memoryview]:
    """Frames asking a worker to compute ``properties`` for ``atoms`` with the model
    ``definition`` (which the worker checks against its own), or with whatever model it
    serves when None.

    Array frames are views of the atoms' own memory where it is already little-endian and
    contiguous, so the atoms must not be changed until the frames have been sent.
    """
    if isinstance(properties, str):
        raise TypeError("properties must be a list of names, not a single string")
    arrays = _request_arrays(atoms)
    header = {
        "v": FORMAT_VERSION,
        "properties": [str(name) for name in properties],
        "arrays": [_spec(name, array) for name, array in arrays],
        "info": _info_scalars(atoms.info),
    }
    text = _ENCODER.encode(header)
    if definition is not None:  # canonical already: spliced in, not encoded again
        text = f'{text[:-1]},"model":{{"fingerprint":"{definition.fingerprint}",' \
               f'"definition":{definition.canonical}}}}}'
    return [text.encode("utf-8"), *(_raw(array) for _, array in arrays)]


def encode_results(results: Mapping[str, Any]) -> list[bytes | memoryview]:
    """Frames carrying every result the calculator produced that the format can hold.

    Values it cannot hold (None, containers, strings in arrays, object arrays) are left out
    rather than failing a calculation whose main results are fine.
    """
    scalars: dict[str, Any] = {}
    arrays: list[tuple[str, np.ndarray]] = []
    for name, value in results.items():
        if not isinstance(name, str):
            continue
        carried = _wire_array(value) if type(value) is np.ndarray and value.ndim else \
            _carry_result(value)
        if isinstance(carried, np.ndarray):
            arrays.append((name, carried))
        elif carried is not None:
            scalars[name] = carried
    header = {
        "v": FORMAT_VERSION,
        "ok": True,
        "scalars": scalars,
        "arrays": [_spec(name, array) for name, array in arrays],
    }
    return [_dump(header), *(_raw(array) for _, array in arrays)]


def _request_arrays(atoms: Atoms) -> list[tuple[str, np.ndarray]]:
    arrays = [
        ("numbers", _wire_array(np.asarray(atoms.numbers))),
        ("positions", _wire_array(_floats(atoms.positions))),
        ("cell", _wire_array(_floats(atoms.cell.array))),
        ("pbc", _wire_array(np.asarray(atoms.pbc, dtype=bool))),
    ]
    for name in OPTIONAL_PER_ATOM:
        if name in atoms.arrays:
            arrays.append((name, _wire_array(_floats(atoms.arrays[name]))))
    return [(name, array) for name, array in arrays if array is not None]


def _floats(values: Any) -> np.ndarray:
    array = np.asarray(values)
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def _info_scalars(info: Mapping[Any, Any]) -> dict[str, Any]:
    """The part of atoms.info that is plain JSON: a model may read charge and spin, and
    other scalars cost nothing, but nested or exotic values have no safe encoding."""
    carried = {}
    for key, value in info.items():
        scalar = _json_scalar(value)
        if isinstance(key, str) and scalar is not None:
            carried[key] = scalar
    return carried


def _json_scalar(value: Any) -> bool | int | float | str | None:
    """A value as an exact JSON scalar, or None when JSON cannot carry it exactly."""
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return _numpy_scalar(np.asarray(value))
    return None


def _numpy_scalar(value: np.ndarray) -> bool | int | float | None:
    kind = value.dtype.kind
    if kind == "b":
        return bool(value)
    if kind in "iu":
        return int(value)
    if kind == "f" and np.isfinite(value):
        exact = float(value)
        return exact if exact == value else None
    return None


def _carry_result(value: Any) -> bool | int | float | str | np.ndarray | None:
    """A result as a JSON scalar when that is exact, else as a wire array, else None.

    Non-finite and complex scalars become 0-d arrays: strict JSON has no NaN, and the header
    must stay parseable by any JSON library.
    """
    scalar = _json_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return None
    return _wire_array(array)


def _wire_array(array: np.ndarray) -> np.ndarray | None:
    """The array in its wire dtype, C-contiguous; a view of the input whenever possible."""
    dtype = _wire_dtype(array.dtype)
    if dtype is None:
        return None
    if array.dtype != dtype:
        array = array.astype(dtype)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _wire_dtype(dtype: np.dtype) -> np.dtype | None:
    """The allowed dtype a local dtype travels as; widened where it has no exact match."""
    kind, size = dtype.kind, dtype.itemsize
    if kind == "b":
        return np.dtype("|b1")
    if kind in "iu":
        return np.dtype(dtype.newbyteorder("<"))
    if kind == "f":
        return np.dtype("<f4" if size <= 4 else "<f8")
    if kind == "c":
        return np.dtype("<c16")
    return None


def _spec(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}


def _raw(array: np.ndarray) -> memoryview:
    """A flat byte view of the array's memory, so that nothing is copied before sending."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _dump(header: Mapping[str, Any]) -> bytes:
    text = _ENCODER.encode(header)
    return text.encode("utf-8")


# --------------------------------------------------------------------------- decoding


class Request(NamedTuple):
    atoms: Atoms
    properties: list[str]
    model: RequestedModel | None  # None: whatever model the worker serves


class RequestedModel(NamedTuple):
    fingerprint: str
    identity: dict[str, Any] | None  # the definition, for naming the differences


def read_request(frames: Sequence[Frame]) -> Request:
    """A request's atoms (which own copies of the data), property names and model."""
    frames = list(frames)
    header = _parse_header(frames)
    arrays = _read_arrays(header, frames[1:])
    properties = _strings(header.get("properties", []), "properties")
    info = _info(header.get("info", {}))
    return Request(_build_atoms(arrays, info), properties, _model(header.get("model")))


def decode_request(frames: Sequence[Frame]) -> tuple[Atoms, list[str]]:
    """The atoms and property names of a request (``read_request`` says its model too)."""
    request = read_request(frames)
    return request.atoms, request.properties


def decode_reply(frames: Sequence[Frame]) -> dict[str, Any]:
    """The results of a successful reply; raises RemoteCalculationError for a failed one
    (a version-1 error reply: workers now report failures as MDP worker errors).

    Arrays are read-only views of the received frames, not copies.
    """
    frames = list(frames)
    header = _parse_header(frames)
    ok = header.get("ok")
    if not isinstance(ok, bool):
        raise PayloadError("reply header: 'ok' must be true or false")
    if not ok:
        if len(frames) != 1:
            raise PayloadError(f"error reply: expected 1 frame, got {len(frames)}")
        raise _remote_error(header.get("error"))
    results: dict[str, Any] = _scalars(header.get("scalars", {}))
    for name, array in _read_arrays(header, frames[1:]).items():
        if name in results:
            raise PayloadError(f"reply: {name!r} is both a scalar and an array")
        results[name] = array.item() if array.ndim == 0 else array
    return results


def _parse_header(frames: list[Frame]) -> dict[str, Any]:
    if not frames:
        raise PayloadError("no frames: expected a JSON header frame")
    try:
        header = _DECODER.decode(str(frames[0], "utf-8"))
    except TypeError:
        raise PayloadError("frame 0 is not a contiguous byte buffer") from None
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, an
        # integer too long for int() (Python limits its digits, by default to 4300)
        raise PayloadError(f"header frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise PayloadError("header frame must be a JSON object")
    version = header.get("v")
    if type(version) is not int:
        raise PayloadError("header: 'v' (format version) must be an integer")
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload version {version}; this side speaks 1")
    return header


def _reject_constant(name: str) -> None:
    raise PayloadError(f"header frame is not strict JSON: {name} is not allowed")


# Made once: json.dumps and json.loads build a new one for every call given options.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _bytes_view(frame: Frame, index: int) -> np.ndarray:
    """The frame as a flat uint8 array over its own memory (zmq.Frame, bytes, ...)."""
    try:
        return np.frombuffer(frame, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        pass
    try:
        return np.frombuffer(frame.buffer, dtype=np.uint8)
    except (AttributeError, TypeError, ValueError, BufferError):
        raise PayloadError(f"frame {index} is not a contiguous buffer") from None


def _read_arrays(header: dict[str, Any], frames: list[Frame]) -> dict[str, np.ndarray]:
    specs = _specs(header.get("arrays", []))
    if len(frames) != len(specs):
        raise PayloadError(
            f"header lists {len(specs)} arrays but {len(frames)} array frames follow"
        )
    arrays = {}
    for index, (spec, frame) in enumerate(zip(specs, frames, strict=True), start=1):
        arrays[spec[0]] = _read_array(spec, frame, index)
    return arrays


def _specs(value: Any) -> list[Spec]:
    if not isinstance(value, list):
        raise PayloadError("header: 'arrays' must be a list")
    specs = [_one_spec(entry, index) for index, entry in enumerate(value)]
    if len({name for name, _, _ in specs}) != len(specs):
        raise PayloadError(f"header: duplicate array names in {[spec[0] for spec in specs]}")
    return specs


def _one_spec(entry: Any, index: int) -> Spec:
    if not isinstance(entry, dict):
        raise PayloadError(f"header: arrays[{index}] must be an object")
    name, dtype = entry.get("name"), entry.get("dtype")
    if not isinstance(name, str):
        raise PayloadError(f"header: arrays[{index}] needs a string 'name'")
    wire = _DTYPES.get(dtype) if isinstance(dtype, str) else None
    if wire is None:
        raise PayloadError(f"array {name!r}: dtype {dtype!r} is not allowed")
    return name, wire, _shape(entry.get("shape"), name)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    """The shape as a tuple; its element count times 16 bytes must fit an index."""
    if not isinstance(value, list) or len(value) > MAX_NDIM:
        raise PayloadError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} sizes")
    bound = 16
    for size in value:
        if type(size) is not int or size < 0:
            raise PayloadError(f"array {name!r}: shape {value} must hold non-negative integers")
        bound *= size or 1
    if bound > sys.maxsize:
        raise PayloadError(f"array {name!r}: shape {value} is too large")
    return tuple(value)


def _read_array(spec: Spec, frame: Frame, index: int) -> np.ndarray:
    """A read-only view of the frame as the spec's array, checked for size (and for
    booleans that are 0 or 1)."""
    name, dtype, shape = spec
    data = _bytes_view(frame, index)
    expected = dtype.itemsize * math.prod(shape)
    if data.nbytes != expected:
        raise PayloadError(
            f"array {name!r} (frame {index}): {data.nbytes} bytes, "
            f"expected {expected} for {dtype.str} {list(shape)}"
        )
    if dtype.kind == "b" and data.size and data.max() > 1:
        raise PayloadError(f"array {name!r}: booleans must be bytes 0 or 1")
    array = data.view(dtype).reshape(shape)
    array.flags.writeable = False
    return array


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PayloadError(f"header: '{what}' must be a list of strings")
    return list(value)


def _plain_scalars(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"header: '{what}' must be an object")
    for key, item in value.items():
        if not isinstance(item, (bool, int, float, str)):
            raise PayloadError(f"header: {what}[{key!r}] must be a number, bool or string")
    return dict(value)


def _model(value: Any) -> RequestedModel | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PayloadError("header: 'model' must be an object")
    fingerprint, identity = value.get("fingerprint"), value.get("definition")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise PayloadError("header: model.fingerprint must be 64 lowercase hex digits")
    if identity is not None and not isinstance(identity, dict):
        raise PayloadError("header: model.definition must be an object")
    return RequestedModel(fingerprint, identity)


def _info(value: Any) -> dict[str, Any]:
    return _plain_scalars(value, "info")


def _scalars(value: Any) -> dict[str, Any]:
    return _plain_scalars(value, "scalars")


def _remote_error(error: Any) -> RemoteCalculationError:
    if not isinstance(error, dict):
        raise PayloadError("error reply: 'error' must be an object")
    kind, message = error.get("type"), error.get("message")
    traceback = error.get("traceback", "")
    if not all(isinstance(text, str) for text in (kind, message, traceback)):
        raise PayloadError("error reply: 'type', 'message' and 'traceback' must be strings")
    worker = error.get("worker")
    return RemoteCalculationError(kind, message, traceback,
                                  worker=worker if isinstance(worker, str) else None)


def _build_atoms(arrays: dict[str, np.ndarray], info: dict[str, Any]) -> Atoms:
    numbers = _numbers(arrays)
    count = len(numbers)
    positions = _field(arrays, "positions", "f", [(count, 3)])
    cell = _field(arrays, "cell", "f", [(3, 3)])
    pbc = _field(arrays, "pbc", "bu", [(3,)])
    if pbc.dtype.kind == "u" and pbc.itemsize != 1:
        raise PayloadError("array 'pbc': dtype must be |b1 or |u1")
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc != 0, info=info)
    if "initial_magmoms" in arrays:
        magmoms = _field(arrays, "initial_magmoms", "f", [(count,), (count, 3)])
        atoms.set_initial_magnetic_moments(magmoms)
    if "initial_charges" in arrays:
        atoms.set_initial_charges(_field(arrays, "initial_charges", "f", [(count,)]))
    return atoms


def _numbers(arrays: dict[str, np.ndarray]) -> np.ndarray:
    if "numbers" not in arrays:
        raise PayloadError("request: required array 'numbers' is missing")
    numbers = arrays["numbers"]
    if numbers.dtype.kind not in "iu" or numbers.ndim != 1:
        raise PayloadError("array 'numbers': must be a 1-d integer array")
    if numbers.size and (numbers.min() < 0 or numbers.max() >= len(chemical_symbols)):
        raise PayloadError("array 'numbers': atomic numbers must lie in 0..118")
    return numbers


def _field(
    arrays: dict[str, np.ndarray], name: str, kinds: str, shapes: list[tuple[int, ...]]
) -> np.ndarray:
    """A request array checked for kind, shape and finiteness: a NaN or infinite cell can
    send a model's neighbour search into a useless or unbounded computation."""
    if name not in arrays:
        raise PayloadError(f"request: required array {name!r} is missing")
    array = arrays[name]
    if array.dtype.kind not in kinds:
        raise PayloadError(f"array {name!r}: dtype {array.dtype.str} is not allowed here")
    if array.shape not in shapes:
        allowed = " or ".join(str(list(shape)) for shape in shapes)
        raise PayloadError(f"array {name!r}: shape {list(array.shape)}, expected {allowed}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise PayloadError(f"array {name!r}: values must be finite (no NaN or infinity)")
    return array
