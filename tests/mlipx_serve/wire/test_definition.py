"""Model definitions without sockets: canonical text, fingerprints, the vectors, paths,
JSON from another process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.calculators.emt import EMT
from support import PROJECT

from mlipx_serve import GenericASECalculator
from mlipx_serve.errors import DefinitionError
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.wire.definition import Definition, differences, resolve_paths

pytestmark = pytest.mark.timeout(30)


VECTORS = PROJECT / "protocol" / "vectors" / "model_definitions.json"


LJ = {"module": "ase.calculators.lj", "class_name": "LennardJones", "kwargs": {"sigma": 2.3}}


def lj(sigma: float = 2.3, **rest: Any) -> Definition:
    return Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": sigma}, **rest)


def test_the_canonical_text_sorts_keys_and_has_no_spaces() -> None:
    definition = Definition({"module": "m", "class_name": "C",
                             "kwargs": {"z": {"b": 1, "a": [2, 1]}, "y": "Å\n"}})
    assert definition.canonical == \
        '{"class_name":"C","kwargs":{"y":"Å\\n","z":{"a":[2,1],"b":1}},"module":"m"}'
    assert definition.fingerprint == hashlib.sha256(definition.canonical.encode()).hexdigest()


def test_name_device_and_extra_are_not_what_a_model_is() -> None:
    plain = lj()
    assert lj(name="my-lj", device="cuda", extra=("mace",)).fingerprint == plain.fingerprint
    assert lj(2.5).fingerprint != plain.fingerprint
    int_sigma = Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": 2})
    float_sigma = Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": 2.0})
    assert int_sigma.fingerprint != float_sigma.fingerprint


def test_tuples_paths_and_numpy_scalars_travel_as_plain_json(tmp_path: Path) -> None:
    definition = Definition.generic("m", "C", {"t": (1, 2), "x": np.float32(0.5),
                                               "n": np.int64(3), "p": tmp_path})
    assert definition.identity["kwargs"] == {"t": [1, 2], "x": 0.5, "n": 3, "p": str(tmp_path)}


@pytest.mark.parametrize("kwargs, named", [
    ({"calc": EMT()}, "kwargs.calc is of type EMT"),
    ({"nested": {"f": lambda: 1}}, "kwargs.nested.f is of type function"),
    ({"x": float("nan")}, "kwargs.x is nan"),
    ({"a": np.zeros(3)}, "kwargs.a is of type ndarray"),
])
def test_what_json_cannot_hold_is_named(kwargs: dict, named: str) -> None:
    with pytest.raises(DefinitionError, match=named):
        Definition.generic("m", "C", kwargs)


@pytest.mark.parametrize("data, says", [
    ({"identity": {"module": "m", "class_name": "C"}}, "has the keys"),
    ({"identity": {**LJ, "extra_key": 1}}, "has the keys"),
    ({"identity": {**LJ, "module": "os; rm"}}, "dotted module name"),
    ({"identity": {**LJ, "class_name": "a.b"}}, "a Python name"),
    ({"identity": {**LJ, "kwargs": [1]}}, "'kwargs' must be an object"),
    ({"identity": {**LJ, "calculator": "x", "calculator_kwargs": {},
                   "calculator_takes_device": False}}, "package.module:Class"),
    ({"identity": LJ, "name": ""}, "'name' must be"),
    ({"identity": LJ, "extra": "mace"}, "'extra' must be"),
    ({"identity": LJ, "pickle": "..."}, "unknown keys"),
    ([LJ], "must be a JSON object"),
])
def test_a_malformed_definition_from_another_process_is_refused(data: Any, says: str) -> None:
    with pytest.raises(DefinitionError, match=says):
        Definition.from_json(data)


def test_a_definition_goes_to_json_and_back() -> None:
    sent = lj(name="my-lj", device="cuda", extra=("mace",))
    back = Definition.from_json(json.loads(json.dumps(sent.to_json())))
    assert (back.canonical, back.name, back.device, back.extra) == \
        (sent.canonical, "my-lj", "cuda", ("mace",))


def test_short_text_own_service_and_differences() -> None:
    assert lj().short() == "ase.calculators.lj:LennardJones sigma=2.3"
    assert lj(name="my-lj").own_service() == f"my-lj@{lj().fingerprint[:8]}"
    assert lj().own_service() == f"LennardJones@{lj().fingerprint[:8]}"
    assert differences(lj().identity, lj(2.5).identity) == ["kwargs.sigma: 2.3 here, 2.5 asked"]
    emt = BUILTIN_MODELS["emt"].definition()
    assert differences(emt.identity, lj().identity) == [
        'class_name: "EMT" here, "LennardJones" asked', "kwargs.sigma: absent here, 2.3 asked",
        'module: "ase.calculators.emt" here, "ase.calculators.lj" asked']


@pytest.mark.parametrize("case", json.loads(VECTORS.read_text())["cases"],
                         ids=lambda case: case["name"])
def test_the_vectors(case: dict) -> None:
    definition = Definition.from_json(case["definition"])
    assert definition.canonical == case["canonical"]
    assert definition.fingerprint == case["fingerprint"]
    assert hashlib.sha256(case["canonical"].encode()).hexdigest() == case["fingerprint"]
    assert definition.own_service() == case["own_service"]
    assert definition.short() == case["short"]


def test_explicit_relative_paths_are_made_absolute_and_words_are_left_alone(
        tmp_path: Path) -> None:
    (tmp_path / "weights.model").write_text("")
    (tmp_path / "medium").mkdir()  # a folder that a word happens to name
    kwargs = {"model": "weights.model", "size": "medium", "up": "../models/x.model",
              "here": "./y.pt", "home": "~/z.pt", "download": "medium-mpa-0",
              "hub": "org/model-name", "url": "https://example.org/w.pt",
              "absolute": "/data/w.pt", "path": Path("weights.model"),
              "list": ["./weights.model", 1], "nested": {"p": "./q"}}
    resolved = resolve_paths(kwargs, tmp_path)
    assert resolved == {
        "model": "weights.model", "size": "medium",
        "up": str((tmp_path / "../models/x.model").resolve()),
        "here": str(tmp_path / "y.pt"), "home": str(Path("~/z.pt").expanduser()),
        "download": "medium-mpa-0", "hub": "org/model-name",
        "url": "https://example.org/w.pt", "absolute": "/data/w.pt",
        "path": str(tmp_path / "weights.model"),
        "list": [str(tmp_path / "weights.model"), 1], "nested": {"p": str(tmp_path / "q")}}


def test_the_files_a_definition_names_count_by_their_content(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights, first training")
    folder = tmp_path / "model-dir"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    def define() -> Definition:
        return Definition.generic("pkg.mod", "Calc", {"model": "./model.pt", "dir": "./model-dir",
                                                      "out": "./not-there.log"}, base=tmp_path)

    first = define()
    files = first.identity["files"]
    assert set(files) == {str(checkpoint), str(folder)}  # (what names nothing: no digest)
    assert all(digest.startswith("sha256:") for digest in files.values())
    assert define().fingerprint == first.fingerprint and first.changed_files() == []
    checkpoint.write_bytes(b"weights, retrained")  # written to the same path
    second = define()
    assert second.fingerprint != first.fingerprint
    assert first.changed_files() == [str(checkpoint)]
    assert differences(first.identity, second.identity) == [
        f"files.{checkpoint}: {json.dumps(files[str(checkpoint)])} here, "
        f"{json.dumps(second.identity['files'][str(checkpoint)])} asked"]
    (folder / "config.json").write_text('{"cutoff": 6}')
    assert define().identity["files"][str(folder)] != files[str(folder)]
    assert Definition.from_json(second.to_json()).fingerprint == second.fingerprint  # as sent
    no_files = Definition.generic("pkg.mod", "Calc", {"size": "medium"}, base=tmp_path)
    assert "files" not in no_files.identity  # (the fingerprints of path-free models stay)


@pytest.mark.parametrize("files", [{}, {"relative/x.pt": "sha256:" + "0" * 64},
                                   {"/x.pt": "md5:abc"}, ["/x.pt"]])
def test_files_that_are_not_absolute_paths_with_digests_are_refused(files) -> None:
    identity = {"module": "pkg.mod", "class_name": "Calc", "kwargs": {}, "files": files}
    with pytest.raises(DefinitionError, match="'files' must map absolute paths"):
        Definition(identity)



@pytest.mark.parametrize("name, says", [
    ("mmi.fast", "starts with 'mmi.'"), ("-fast", "starts with '-'"),
    ("two\nlines", "not printable"), ("模型" * 40, "is 240 bytes long in UTF-8 (at most 200)"),
    ("", "non-empty string")])
def test_a_name_that_cannot_name_a_service_is_refused_where_it_is_given(name, says):
    with pytest.raises(DefinitionError, match=says.replace("(", r"\(").replace(")", r"\)")):
        GenericASECalculator(module="m", class_name="C", name=name)
    with pytest.raises(DefinitionError, match=says.replace("(", r"\(").replace(")", r"\)")):
        Definition({"module": "m", "class_name": "C", "kwargs": {}}, name=name)


def test_a_service_of_its_own_fits_mdp_and_cuts_no_character_in_two():
    name = "模型" * 33 + "a"  # 199 bytes: a name that may be
    own = Definition({"module": "m", "class_name": "C", "kwargs": {}}, name=name).own_service()
    assert len(own.encode()) <= 255 and own.startswith(name)
    unicode_class = Definition({"module": "m", "class_name": "Ω" * 150, "kwargs": {}})
    label = unicode_class.own_service().split("@")[0]
    assert len(label.encode()) <= 200 and set(label) == {"Ω"}
