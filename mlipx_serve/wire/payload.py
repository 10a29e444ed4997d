"""The ASE payload: atoms and calculator results as a JSON header plus raw array frames.

Nothing here touches a socket. Frames go in and out as lists of buffers, so the same codec
serves the worker, the calculator, the tests and the test-vector generator. Nothing from the
network is ever unpickled or evaluated: a header is plain JSON, an array is raw little-endian
bytes whose dtype comes from a short allow-list. The wire format is specified in
``protocol/ase-payload.md``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import traceback
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
    "decode_chunk_reply",
    "decode_request",
    "read_chunk_reply",
    "read_reply",
    "encode_chunk",
    "encode_chunk_results",
    "read_request",
    "encode_request",
    "encode_results",
]

FORMAT_VERSION = 1  # one structure
CHUNK_VERSION = 2  # several structures in one message (protocol/ase-payload.md, version 2)

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
PER_STRUCTURE = ("cell", "pbc")  # in a chunk, one row per structure; the others per atom
TRACEBACK_LIMIT = 8000  # characters of a failed structure's traceback in a chunk reply

Frame = Any  # bytes, bytearray, memoryview, zmq.Frame: anything with the buffer protocol
Spec = tuple[str, np.dtype, tuple[int, ...]]


# --------------------------------------------------------------------------- encoding


def encode_request(atoms: Atoms, properties: Iterable[str],
                   definition: Definition | None = None, *, optional: Iterable[str] = (),
                   describe: bool = False) -> list[bytes | memoryview]:
    """Frames asking a worker to compute ``properties`` for ``atoms`` with the model
    ``definition`` (which the worker checks against its own), or with whatever model it
    serves when None; and ``optional`` ones where the model computes them (one it cannot
    fails nothing); with ``describe``, the reply says what the model is.

    Array frames are views of the atoms' own memory where it is already little-endian and
    contiguous, so the atoms must not be changed until the frames have been sent.
    """
    if isinstance(properties, str) or isinstance(optional, str):
        raise TypeError("properties must be a list of names, not a single string")
    arrays = _request_arrays(atoms)
    header = {
        "v": FORMAT_VERSION,
        "properties": [str(name) for name in properties],
        "arrays": [_spec(name, array) for name, array in arrays],
        "info": _info_scalars(atoms.info),
    }
    if optional:
        header["optional"] = [str(name) for name in optional]
    if describe:
        header["describe"] = True
    return _request_frames(header, arrays, definition)


def _request_frames(header: dict[str, Any], arrays: list[tuple[str, np.ndarray]],
                    definition: Definition | None) -> list[bytes | memoryview]:
    """A request's header, with the model it asks for, and its array frames. The model's
    definition is canonical JSON already: spliced into the header's text, not encoded
    again."""
    text = _ENCODER.encode(header)
    if definition is not None:
        text = f'{text[:-1]},"model":{{"fingerprint":"{definition.fingerprint}",' \
               f'"definition":{definition.canonical}}}}}'
    return [text.encode("utf-8"), *(_raw(array) for _, array in arrays)]


def encode_results(results: Mapping[str, Any], seconds: float | None = None,
                   model: Mapping[str, Any] | None = None) -> list[bytes | memoryview]:
    """Frames carrying every result the calculator produced that the format can hold,
    ``seconds``, how long the worker took for the request, and ``model``, what the model
    is (``describe_model``), where given.

    Values it cannot hold (None, containers, strings in arrays, object arrays) are left out
    rather than failing a calculation whose main results are fine.
    """
    scalars, arrays = _carried(results)
    header = {
        "v": FORMAT_VERSION,
        "ok": True,
        "scalars": scalars,
        "arrays": [_spec(name, array) for name, array in arrays],
    }
    if model is not None:
        header["model"] = dict(model)
    return [_dump(_timed(header, seconds)), *(_raw(array) for _, array in arrays)]


def describe_model(calc: Any) -> dict[str, Any]:
    """What a served calculator says of the model behind it, as the model's own does: its
    ``name``, ``implemented_properties``, ``parameters`` and ``todict()``, each as far as
    JSON can hold it."""
    todict = getattr(calc, "todict", None)
    return {"name": str(getattr(calc, "name", type(calc).__name__.lower())),
            "implemented_properties": [str(name) for name in
                                       getattr(calc, "implemented_properties", [])],
            "parameters": _plain_data(dict(getattr(calc, "parameters", None) or {})),
            "todict": _plain_data(dict(todict() if callable(todict) else {}))}


def _plain_data(value: Any) -> Any:
    """``value`` as JSON data where it is made of scalars, lists and string-keyed dicts
    (numpy arrays as lists); what is not is left out (None)."""
    if isinstance(value, Mapping):
        found = {key: _plain_data(item) for key, item in value.items() if isinstance(key, str)}
        return {key: item for key, item in found.items() if item is not None}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size < 10_000:
        return _plain_data(value.tolist())
    if isinstance(value, (list, tuple)):
        items = [_plain_data(item) for item in value]
        return None if any(item is None for item in items) else items
    return _json_scalar(value)


def _timed(header: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    if seconds is not None:
        header["seconds"] = round(seconds, 6)
    return header


def _carried(results: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """(the results that are scalars, those that are arrays) of what the format can hold."""
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
    return scalars, arrays


def encode_chunk(structures: Sequence[Atoms], properties: Iterable[str],
                 definition: Definition | None = None) -> list[bytes | memoryview]:
    """Frames asking for ``properties`` of several structures at once (version 2): their
    arrays stacked, one frame per array, so that a chunk costs a request, not one each.
    The structures must carry the same arrays (``chunk_key``)."""
    if isinstance(properties, str):
        raise TypeError("properties must be a list of names, not a single string")
    if len({chunk_key(atoms) for atoms in structures}) != 1:
        raise ValueError("the structures of one chunk must carry the same arrays "
                         "(chunk_key): initial magnetic moments, charges")
    each = [dict(_request_arrays(atoms)) for atoms in structures]
    arrays = [(name, _stacked(name, [found[name] for found in each])) for name in each[0]]
    header = {
        "v": CHUNK_VERSION,
        "properties": [str(name) for name in properties],
        "counts": [len(atoms) for atoms in structures],
        "arrays": [_spec(name, array) for name, array in arrays],
        "info": [_info_scalars(atoms.info) for atoms in structures],
    }
    return _request_frames(header, arrays, definition)


def chunk_key(atoms: Atoms) -> tuple:
    """What structures that share one chunk have in common: the optional arrays they
    carry, and their shapes beyond the atoms (a magnetic moment per atom, or a vector)."""
    return tuple((name, atoms.arrays[name].shape[1:]) for name in OPTIONAL_PER_ATOM
                 if name in atoms.arrays)


def encode_chunk_results(results: Sequence[Mapping[str, Any] | BaseException],
                         seconds: float | None = None) -> list[bytes | memoryview]:
    """Frames carrying each structure's results, or its error, in the chunk's order: a
    structure that failed fails alone, in its place; and how long the worker took."""
    entries, arrays = [], []
    for result in results:
        if isinstance(result, BaseException):
            entries.append({"error": _error_entry(result)})
            continue
        scalars, carried = _carried(result)
        entries.append({"scalars": scalars,
                        "arrays": [_spec(name, array) for name, array in carried]})
        arrays += [array for _, array in carried]
    header = {"v": CHUNK_VERSION, "ok": True, "results": entries}
    return [_dump(_timed(header, seconds)), *(_raw(array) for array in arrays)]


def _stacked(name: str, arrays: list[np.ndarray]) -> np.ndarray:
    """Per-atom arrays one after another; the cell and the periodicity one per structure."""
    if name in PER_STRUCTURE:
        return np.stack(arrays)
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


def _error_entry(error: BaseException) -> dict[str, str]:
    trace = "".join(traceback.format_exception(error))[-TRACEBACK_LIMIT:]
    return {"type": type(error).__name__, "message": str(error), "traceback": trace}


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
    structures: list[Atoms | PayloadError]  # one, or a chunk's; a malformed one its error
    properties: list[str]
    model: RequestedModel | None  # None: whatever model the worker serves
    chunk: bool  # several structures (version 2), answered by ``encode_chunk_results``
    optional: list[str] = []  # computed where the model can; one it cannot fails nothing
    describe: bool = False  # the reply says what the model is (``describe_model``)


class RequestedModel(NamedTuple):
    fingerprint: str
    identity: dict[str, Any] | None  # the definition, for naming the differences


class Computed(NamedTuple):
    """A reply's results (one structure's, or a chunk's list), how long the worker took
    for the request, where it said (``seconds``; None if not), and what the model is,
    where it was asked (``model``: ``describe_model``'s keys; None if not)."""

    results: Any
    seconds: float | None
    model: dict[str, Any] | None = None


class RemoteFailure(NamedTuple):
    """A structure of a chunk that failed on the worker, as the reply says it."""

    error_type: str
    message: str
    traceback: str


def structures_in(frames: Sequence[Frame]) -> int:
    """How many structures a request asks for: a chunk's count, else one (a request that
    is no payload at all counts as one). Cheap, as a broker weighs every request: only a
    header that names ``counts`` is parsed."""
    counts = _named_field(_header_bytes(frames), b'"counts"')
    return len(counts) if isinstance(counts, list) and counts else 1


def worker_report(frames: Sequence[Frame]) -> tuple[int, float | None]:
    """(structures of a chunk that failed alone, the worker's seconds) as a successful
    reply says. Cheap, as a broker reads every reply: a chunk reply's header is parsed
    only where it names an error, and the seconds are read where the reference encoder
    puts them, last in the header (elsewhere: None, and the broker times the request)."""
    header = _header_bytes(frames)
    return _failed_in(header), _seconds_at_end(header)


def _header_bytes(frames: Sequence[Frame]) -> bytes:
    return bytes(frames[0]) if frames else b""


def _named_field(header: bytes, quoted_key: bytes) -> Any:
    """The top-level key of a JSON header (given as its JSON text, ``b'"counts"'``), parsed
    only if the header's text names it; None where it is not there or the header is no
    JSON object."""
    if quoted_key not in header:
        return None
    try:
        return json.loads(header).get(quoted_key[1:-1].decode())
    except (ValueError, AttributeError, RecursionError):
        return None


def _failed_in(header: bytes) -> int:
    if b'"error"' not in header:
        return 0
    results = _named_field(header, b'"results"')
    if not isinstance(results, list):
        return 0
    return sum(1 for entry in results if isinstance(entry, dict) and "error" in entry)


_SECONDS_AT_END = re.compile(rb'"seconds":([0-9.eE+-]{1,32})}\s*\Z')


def _seconds_at_end(header: bytes) -> float | None:
    found = _SECONDS_AT_END.search(header, max(0, len(header) - 64))
    if found is None:
        return None
    try:
        seconds = float(found.group(1))
    except ValueError:
        return None
    return seconds if 0 <= seconds < math.inf else None  # (NaN compares false)


def read_request(frames: Sequence[Frame]) -> Request:
    """A request's structures (which own copies of the data), property names and model.
    In a chunk, a structure that breaks the format is a ``PayloadError`` in its place."""
    frames = list(frames)
    header = _parse_header(frames, (FORMAT_VERSION, CHUNK_VERSION))
    arrays = _read_arrays(header, frames[1:])
    properties = _strings(header.get("properties", []), "properties")
    optional = _strings(header.get("optional", []), "optional")
    model = _model(header.get("model"))
    describe = header.get("describe") is True
    if header["v"] == FORMAT_VERSION:
        return Request([_build_atoms(arrays, _info(header.get("info", {})))], properties,
                       model, False, optional, describe)
    return Request(_chunk_structures(header, arrays), properties, model, True, optional,
                   describe)


def decode_request(frames: Sequence[Frame]) -> tuple[Atoms, list[str]]:
    """The atoms and property names of a one-structure request (``read_request`` says its
    model too, and reads chunks)."""
    request = read_request(frames)
    if request.chunk:
        raise PayloadError("a chunk of several structures: read it with read_request")
    return request.structures[0], request.properties


def decode_chunk_reply(frames: Sequence[Frame]) -> list[dict[str, Any] | RemoteFailure]:
    """Each structure's results, or how it failed, in the chunk's order. Arrays are
    read-only views of the received frames."""
    return read_chunk_reply(frames).results


def read_chunk_reply(frames: Sequence[Frame]) -> Computed:
    """``decode_chunk_reply``'s list, with the time the worker took."""
    frames = list(frames)
    header = _parse_header(frames, (CHUNK_VERSION,))
    entries = header.get("results")
    if header.get("ok") is not True or not isinstance(entries, list):
        raise PayloadError("chunk reply: 'ok' must be true and 'results' a list")
    arrays = iter(frames[1:])
    found: list[dict[str, Any] | RemoteFailure] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PayloadError(f"chunk reply: results[{index}] must be an object")
        if "error" in entry:
            found.append(RemoteFailure(*_error_fields(entry["error"], "chunk reply")))
            continue
        described = entry.get("arrays", [])
        if not isinstance(described, list):
            raise PayloadError(f"chunk reply: results[{index}].arrays must be a list")
        found.append(_results(entry, list(itertools.islice(arrays, len(described)))))
    if next(arrays, None) is not None:
        raise PayloadError("chunk reply: more array frames than its results list")
    return Computed(found, _seconds(header))


def decode_reply(frames: Sequence[Frame]) -> dict[str, Any]:
    """The results of a successful reply; raises RemoteCalculationError for a failed one
    (a version-1 error reply: workers now report failures as MDP worker errors).

    Arrays are read-only views of the received frames, not copies.
    """
    return read_reply(frames).results


def read_reply(frames: Sequence[Frame]) -> Computed:
    """``decode_reply``'s results, with the time the worker took."""
    frames = list(frames)
    header = _parse_header(frames)
    ok = header.get("ok")
    if not isinstance(ok, bool):
        raise PayloadError("reply header: 'ok' must be true or false")
    if not ok:
        if len(frames) != 1:
            raise PayloadError(f"error reply: expected 1 frame, got {len(frames)}")
        raise _remote_error(header.get("error"))
    return Computed(_results(header, frames[1:]), _seconds(header), _description(header))


def _description(header: dict[str, Any]) -> dict[str, Any] | None:
    """A reply's description of the model, checked; None where it has none."""
    model = header.get("model")
    if model is None:
        return None
    if not (isinstance(model, dict) and isinstance(model.get("name"), str) and
            isinstance(model.get("parameters"), dict)):
        raise PayloadError("reply: 'model' must be an object with 'name', "
                           "'implemented_properties' and 'parameters'")
    todict = model.get("todict", model["parameters"])
    if not isinstance(todict, dict):
        raise PayloadError("reply: 'model.todict' must be an object")
    return {"name": model["name"], "parameters": model["parameters"], "todict": todict,
            "implemented_properties": _strings(model.get("implemented_properties"),
                                               "model.implemented_properties")}


def _seconds(header: dict[str, Any]) -> float | None:
    """The worker's time, or None where it is missing or not a sensible number (it only
    steers the size of chunks: a reply is not refused for it)."""
    seconds = header.get("seconds")
    if type(seconds) in (int, float) and 0 <= seconds < math.inf:
        return float(seconds)
    return None


def _results(entry: dict[str, Any], frames: list[Frame]) -> dict[str, Any]:
    """One structure's results: its scalars and the arrays of ``frames``."""
    results: dict[str, Any] = _scalars(entry.get("scalars", {}))
    for name, array in _read_arrays(entry, frames).items():
        if name in results:
            raise PayloadError(f"reply: {name!r} is both a scalar and an array")
        results[name] = array.item() if array.ndim == 0 else array
    return results


def _chunk_structures(header: dict[str, Any], arrays: dict[str, np.ndarray]
                      ) -> list[Atoms | PayloadError]:
    """The structures of a chunk, cut out of its stacked arrays (each a view)."""
    counts = header.get("counts")
    if not isinstance(counts, list) or not counts or \
            not all(type(count) is int and count >= 0 for count in counts):
        raise PayloadError("chunk: 'counts' must be a list of atom counts")
    infos = header.get("info", [{}] * len(counts))
    if not isinstance(infos, list) or len(infos) != len(counts):
        raise PayloadError("chunk: 'info' must be a list, one object per structure")
    _check_stacked(arrays, counts)
    ends = np.cumsum(counts).tolist()
    found: list[Atoms | PayloadError] = []
    for index, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        own = {name: array[index] if name in PER_STRUCTURE else array[start:end]
               for name, array in arrays.items()}
        try:
            found.append(_build_atoms(own, _info(infos[index])))
        except PayloadError as error:
            found.append(PayloadError(f"structure {index} of the chunk: {error}"))
    return found


def _check_stacked(arrays: dict[str, np.ndarray], counts: list[int]) -> None:
    """Per-atom arrays hold every structure's atoms; the cell and the periodicity one row
    per structure. (Each structure's values are checked as one request's are.)"""
    atoms, structures = sum(counts), len(counts)
    for name, array in arrays.items():
        rows = structures if name in PER_STRUCTURE else atoms
        if array.ndim == 0 or array.shape[0] != rows:
            raise PayloadError(f"chunk: array {name!r} must have {rows} rows (its shape is "
                               f"{list(array.shape)})")


def _parse_header(frames: list[Frame], versions: tuple[int, ...] = (FORMAT_VERSION,)
                  ) -> dict[str, Any]:
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
    if version not in versions:
        spoken = " and ".join(str(v) for v in versions)
        raise PayloadError(f"unsupported payload version {version} here; this side reads "
                           f"{spoken}")
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


def _error_fields(error: Any, where: str) -> tuple[str, str, str]:
    """An error's type, message and traceback (a missing traceback is "")."""
    if not isinstance(error, dict):
        raise PayloadError(f"{where}: 'error' must be an object")
    fields = error.get("type"), error.get("message"), error.get("traceback", "")
    if not all(isinstance(text, str) for text in fields):
        raise PayloadError(f"{where}: 'type', 'message' and 'traceback' must be strings")
    return fields


def _info(value: Any) -> dict[str, Any]:
    return _plain_scalars(value, "info")


def _scalars(value: Any) -> dict[str, Any]:
    return _plain_scalars(value, "scalars")


def _remote_error(error: Any) -> RemoteCalculationError:
    kind, message, traceback = _error_fields(error, "error reply")
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
