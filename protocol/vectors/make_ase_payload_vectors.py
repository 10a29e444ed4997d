"""Regenerate ase_payload.json, the byte-exact test vectors of the ASE payload.

Run from anywhere: ``python protocol/vectors/make_ase_payload_vectors.py``. The vectors are
produced by the codec itself, so a diff after running this is a wire format change and
must come with a spec change (and, if incompatible, a version bump).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mlipx_serve.wire.definition import Definition  # noqa: E402
from mlipx_serve.wire.payload import (  # noqa: E402
    encode_chunk,
    encode_chunk_results,
    encode_request,
    encode_results,
)

OUTPUT = Path(__file__).with_name("ase_payload.json")

# Every float below is a small multiple of a power of two, so it is exact in binary and
# its JSON text is the same in every language.
CASES: list[dict[str, Any]] = [
    {
        "name": "request-molecule-charge-spin",
        "kind": "request",
        "description": "O2 molecule, not periodic, with charge and spin multiplicity in info",
        "meaning": {
            "properties": ["energy", "forces"],
            "numbers": [8, 8],
            "positions": [[0.0, 0.0, 0.0], [0.0, 0.0, 1.25]],
            "cell": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            "pbc": [False, False, False],
            "info": {"charge": 0, "spin": 3},
        },
    },
    {
        "name": "request-periodic-one-atom",
        "kind": "request",
        "description": "fcc Cu primitive cell, one atom, periodic, asking for stress too",
        "meaning": {
            "properties": ["energy", "forces", "stress"],
            "numbers": [29],
            "positions": [[0.0, 0.0, 0.0]],
            "cell": [[0.0, 1.75, 1.75], [1.75, 0.0, 1.75], [1.75, 1.75, 0.0]],
            "pbc": [True, True, True],
            "info": {},
        },
    },
    {
        "name": "request-with-model",
        "kind": "request",
        "description": "fcc Cu primitive cell for the model defined as Lennard-Jones with "
        "sigma 2.3: the header names its fingerprint and definition "
        "(protocol/model-definition.md)",
        "meaning": {
            "properties": ["energy", "forces"],
            "numbers": [29],
            "positions": [[0.0, 0.0, 0.0]],
            "cell": [[0.0, 1.75, 1.75], [1.75, 0.0, 1.75], [1.75, 1.75, 0.0]],
            "pbc": [True, True, True],
            "info": {},
            "model": {"fingerprint": "dc0de04325ae1137488fe4d531d5d7206c0"
                                     "8eca2e5c9ab50a9dad0e3dfe41918",
                      "definition": {"class_name": "LennardJones", "kwargs": {"sigma": 2.3},
                                     "module": "ase.calculators.lj"}},
        },
    },
    {
        "name": "request-magmoms-charges-info",
        "kind": "request",
        "description": "two Fe atoms, slab periodicity, initial magmoms and charges, "
        "string, bool and float scalars in info",
        "meaning": {
            "properties": ["energy", "forces", "magmoms"],
            "numbers": [26, 26],
            "positions": [[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]],
            "cell": [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 20.0]],
            "pbc": [True, True, False],
            "info": {"charge": 0, "spin": 1, "label": "afm", "relaxed": False, "T": 300.5},
            "initial_magmoms": [2.5, -2.5],
            "initial_charges": [0.25, -0.25],
        },
    },
    {
        "name": "reply-energy-forces-stress-energies",
        "kind": "reply",
        "description": "successful reply for two atoms: scalars in the header, arrays as frames",
        "meaning": {
            "scalars": {"energy": -7.25, "free_energy": -7.25},
            "arrays": {
                "forces": {
                    "dtype": "<f8",
                    "shape": [2, 3],
                    "data": [[0.5, -0.25, 0.0], [-0.5, 0.25, 0.0]],
                },
                "stress": {
                    "dtype": "<f8",
                    "shape": [6],
                    "data": [0.125, 0.125, 0.125, 0.0, 0.0, -0.0625],
                },
                "energies": {"dtype": "<f8", "shape": [2], "data": [-3.625, -3.625]},
            },
        },
    },
    {
        "name": "chunk-request-three-structures",
        "kind": "chunk-request",
        "description": "payload version 2: an O2 molecule with charge and spin, a periodic "
        "Cu cell and a structure of no atoms, stacked into one request",
        "meaning": {
            "properties": ["energy", "forces"],
            "structures": [
                {"numbers": [8, 8], "positions": [[0.0, 0.0, 0.0], [0.0, 0.0, 1.25]],
                 "cell": [[0.0] * 3] * 3, "pbc": [False] * 3,
                 "info": {"charge": 0, "spin": 3}},
                {"numbers": [29], "positions": [[0.0, 0.0, 0.0]],
                 "cell": [[0.0, 1.75, 1.75], [1.75, 0.0, 1.75], [1.75, 1.75, 0.0]],
                 "pbc": [True] * 3, "info": {}},
                {"numbers": [], "positions": [], "cell": [[0.0] * 3] * 3,
                 "pbc": [False] * 3, "info": {}},
            ],
        },
    },
    {
        "name": "chunk-request-magmoms-with-model",
        "kind": "chunk-request",
        "description": "payload version 2: two Fe structures with initial magnetic moments, "
        "for the model defined as Lennard-Jones with sigma 2.3",
        "meaning": {
            "properties": ["energy"],
            "structures": [
                {"numbers": [26], "positions": [[0.0, 0.0, 0.0]],
                 "cell": [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]],
                 "pbc": [True] * 3, "info": {}, "initial_magmoms": [2.5]},
                {"numbers": [26, 26], "positions": [[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]],
                 "cell": [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]],
                 "pbc": [True] * 3, "info": {"label": "afm"},
                 "initial_magmoms": [2.5, -2.5]},
            ],
            "model": {"fingerprint": "dc0de04325ae1137488fe4d531d5d7206c0"
                                     "8eca2e5c9ab50a9dad0e3dfe41918",
                      "definition": {"class_name": "LennardJones", "kwargs": {"sigma": 2.3},
                                     "module": "ase.calculators.lj"}},
        },
    },
    {
        "name": "chunk-reply-results-and-an-error",
        "kind": "chunk-reply",
        "description": "payload version 2: the reply to three structures, the second of "
        "which failed alone",
        "meaning": {
            "results": [
                {"scalars": {"energy": -7.25},
                 "arrays": {"forces": {"dtype": "<f8", "shape": [2, 3],
                                       "data": [[0.5, -0.25, 0.0], [-0.5, 0.25, 0.0]]}}},
                {"error": {"type": "ValueError", "message": "cell is singular",
                           "traceback": "ValueError: cell is singular\n"}},
                {"scalars": {"energy": 0.5, "converged": True},
                 "arrays": {"forces": {"dtype": "<f8", "shape": [1, 3],
                                       "data": [[0.0, 0.0, 0.125]]},
                            "stress": {"dtype": "<f8", "shape": [6],
                                       "data": [0.125, 0.125, 0.125, 0.0, 0.0, 0.0]}}},
            ],
        },
    },
    {
        "name": "reply-error",
        "kind": "error",
        "description": "failed calculation: the error travels as type name and text",
        "meaning": {
            "error": {
                "type": "ValueError",
                "message": "cell is singular",
                "traceback": "Traceback (most recent call last):\n"
                '  File "model.py", line 7, in calculate\n'
                "ValueError: cell is singular\n",
            }
        },
    },
]


def atoms_from_meaning(meaning: dict[str, Any]) -> Atoms:
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


def definition_from_meaning(meaning: dict[str, Any]) -> Definition | None:
    """The definition of the request's model, which must have the fingerprint written."""
    if "model" not in meaning:
        return None
    definition = Definition(meaning["model"]["definition"])
    assert definition.fingerprint == meaning["model"]["fingerprint"]
    return definition


def results_from_meaning(meaning: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = dict(meaning["scalars"])
    for name, array in meaning["arrays"].items():
        values = np.array(array["data"], dtype=array["dtype"])
        results[name] = values.reshape(array["shape"])
    return results


def exception_from_meaning(error: dict[str, str]) -> Exception:
    """The exception a worker caught (never raised here: its traceback is its line)."""
    assert error["type"] == "ValueError"
    return ValueError(error["message"])


def frames_for(case: dict[str, Any]) -> list[Any]:
    meaning = case["meaning"]
    if case["kind"] == "request":
        return encode_request(atoms_from_meaning(meaning), meaning["properties"],
                              definition_from_meaning(meaning))
    if case["kind"] == "reply":
        return encode_results(results_from_meaning(meaning))
    if case["kind"] == "chunk-request":
        return encode_chunk([atoms_from_meaning(each) for each in meaning["structures"]],
                            meaning["properties"], definition_from_meaning(meaning))
    if case["kind"] == "chunk-reply":
        return encode_chunk_results([
            exception_from_meaning(entry["error"]) if "error" in entry else
            results_from_meaning(entry)
            for entry in meaning["results"]])
    # payload version 1's error reply, which workers no longer send but clients decode
    header = {"v": 1, "ok": False, "error": meaning["error"]}
    return [json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()]


def with_frames(case: dict[str, Any]) -> dict[str, Any]:
    """The case with its frames as hex, plus the header as text for human readers."""
    frames = [bytes(frame) for frame in frames_for(case)]
    return {**case, "header_text": frames[0].decode("utf-8"), "frames": [f.hex() for f in frames]}


def build() -> dict[str, Any]:
    cases = [with_frames(case) for case in CASES]
    return {
        "format": "mlipx-serve ASE payload test vectors",
        "payload_versions": [1, 2],
        "spec": "protocol/ase-payload.md",
        "cases": cases,
    }


def main() -> None:
    OUTPUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
