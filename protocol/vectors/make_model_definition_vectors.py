"""Regenerate model_definitions.json: definitions, their canonical text and fingerprints.

Run from anywhere: ``python protocol/vectors/make_model_definition_vectors.py``. The
vectors come from ``mlipx_serve.definition`` itself, so a diff after running this changes
what a model's fingerprint is, and must come with a change of
``protocol/model-definition.md``. The identities are written already resolved (no relative
paths): resolving is the client's business, before the canonical form.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mlipx_serve.wire.definition import Definition  # noqa: E402

OUTPUT = Path(__file__).with_name("model_definitions.json")

CASES: list[dict[str, Any]] = [
    {"name": "emt", "description": "ASE's EMT, no arguments (the built-in model 'emt')",
     "definition": {"identity": {"module": "ase.calculators.emt", "class_name": "EMT",
                                 "kwargs": {}}, "name": "emt", "device": None, "extra": []}},
    {"name": "lj-named", "description": "a Lennard-Jones potential given a name",
     "definition": {"identity": {"module": "ase.calculators.lj", "class_name": "LennardJones",
                                 "kwargs": {"sigma": 2.3, "epsilon": 0.0104}},
                    "name": "my-lj", "device": None, "extra": []}},
    {"name": "lj-unnamed", "description": "the same without a name: same fingerprint, the "
     "class names its own service",
     "definition": {"identity": {"module": "ase.calculators.lj", "class_name": "LennardJones",
                                 "kwargs": {"epsilon": 0.0104, "sigma": 2.3}},
                    "name": None, "device": "cpu", "extra": []}},
    {"name": "numbers", "description": "an integer is not a float: 2 and 2.0 differ; "
     "exponents as Python writes them",
     "definition": {"identity": {"module": "pkg.mod", "class_name": "make",
                                 "kwargs": {"n": 2, "x": 2.0, "tiny": 1e-05, "big": 1e16,
                                            "flag": True, "none": None}},
                    "name": None, "device": None, "extra": []}},
    {"name": "nested-unicode", "description": "nested objects sorted at every depth, lists "
     "kept in order, non-ASCII text as UTF-8, a control character escaped",
     "definition": {"identity": {"module": "pkg.mod", "class_name": "Calc",
                                 "kwargs": {"z": [3, 1, 2], "options": {"b": "Å", "a": "x\ty"},
                                            "path": "/models/mace-mpa-0-medium.model"}},
                    "name": "mace-custom", "device": "cuda", "extra": ["mace"]}},
    {"name": "files", "description": "a checkpoint named by an absolute path, with the "
     "digest of its content: written anew, the same path is another model",
     "definition": {"identity": {"module": "mace.calculators", "class_name": "MACECalculator",
                                 "kwargs": {"model_paths": "/models/run-7/best.model"},
                                 "files": {"/models/run-7/best.model": "sha256:"
                                           "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c"
                                           "d15d6c15b0f00a08"}},
                    "name": "mace-run-7", "device": "cuda", "extra": ["mace"]}},
    {"name": "wrapped", "description": "a loaded network wrapped by a calculator class "
     "(the built-in 'orb-v3')",
     "definition": {"identity": {"module": "orb_models.forcefield.pretrained",
                                 "class_name": "orb_v3_conservative_inf_omat", "kwargs": {},
                                 "calculator": "orb_models.forcefield.calculator:ORBCalculator",
                                 "calculator_kwargs": {}, "calculator_takes_device": True},
                    "name": "orb-v3", "device": "auto", "extra": ["orb"]}},
]


def with_results(case: dict[str, Any]) -> dict[str, Any]:
    definition = Definition.from_json(case["definition"])
    return {**case, "canonical": definition.canonical, "fingerprint": definition.fingerprint,
            "own_service": definition.own_service(), "short": definition.short()}


def build() -> dict[str, Any]:
    return {"format": "mlipx-serve model definition test vectors",
            "spec": "protocol/model-definition.md",
            "cases": [with_results(case) for case in CASES]}


def main() -> None:
    OUTPUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
