"""Model identity without sockets: canonical definitions, fingerprints, the vectors, the
client's choice of service and the worker's check of every request."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mlipx_serve.client.routing import serving
from mlipx_serve.errors import DefinitionError, DefinitionMismatch, PayloadError
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.models.definitions import GenericASECalculator, PretrainedASECalculator, model_from
from mlipx_serve.models.models_file import load_models_file
from mlipx_serve.wire.definition import Definition, differences, resolve_paths
from mlipx_serve.wire.payload import decode_reply, encode_request, read_request
from mlipx_serve.worker.compute import compute
from mlipx_serve.worker.handler import make_handler

pytestmark = pytest.mark.timeout(30)

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "model_definitions.json"
LJ = {"module": "ase.calculators.lj", "class_name": "LennardJones", "kwargs": {"sigma": 2.3}}


def lj(sigma: float = 2.3, **rest: Any) -> Definition:
    return Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": sigma}, **rest)


# ------------------------------------------------------------ canonical form


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


# ------------------------------------------------------------ relative paths


def test_relative_paths_are_made_absolute_and_names_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "weights.model").write_text("")
    kwargs = {"model": "weights.model", "up": "../models/x.model", "here": "./y.pt",
              "home": "~/z.pt", "download": "medium-mpa-0", "hub": "org/model-name",
              "url": "https://example.org/w.pt", "absolute": "/data/w.pt",
              "list": ["weights.model", 1], "nested": {"p": "./q"}}
    resolved = resolve_paths(kwargs, tmp_path)
    assert resolved == {
        "model": str(tmp_path / "weights.model"),
        "up": str((tmp_path / "../models/x.model").resolve()),
        "here": str(tmp_path / "y.pt"), "home": str(Path("~/z.pt").expanduser()),
        "download": "medium-mpa-0", "hub": "org/model-name",
        "url": "https://example.org/w.pt", "absolute": "/data/w.pt",
        "list": [str(tmp_path / "weights.model"), 1], "nested": {"p": str(tmp_path / "q")}}


def test_inline_definitions_resolve_against_the_working_directory(tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = GenericASECalculator(module="m", class_name="C", kwargs={"path": "./w.pt"})
    assert model.definition().identity["kwargs"] == {"path": str(tmp_path / "w.pt")}
    assert model.kwargs == {"path": "./w.pt"}  # the definition itself is left as written


def test_a_models_file_resolves_against_its_own_directory(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "lj.json").write_text("{}")
    (folder / "models.py").write_text(textwrap.dedent("""
        from mlipx_serve import GenericASECalculator
        ALL_MODELS = {"ckpt": GenericASECalculator(module="m", class_name="C",
                                                   kwargs={"path": "lj.json", "up": "../x"})}
    """))
    monkeypatch.chdir(tmp_path)  # elsewhere: the file's directory counts, not this one
    [entry] = load_models_file(folder / "models.py").values()
    assert entry.kwargs == {"path": str(folder / "lj.json"), "up": str(tmp_path / "x")}


# ------------------------------------------------------------ definition kinds


def test_a_definition_merges_call_arguments_and_leaves_the_device_out() -> None:
    model = GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                 kwargs={"sigma": 2.0, "rc": 5.0}, device="cuda", name="x")
    definition = model.definition(sigma=2.3, device="cpu")
    assert definition.identity["kwargs"] == {"sigma": 2.3, "rc": 5.0}
    assert (definition.device, definition.name) == ("cpu", "x")
    assert model.definition().device == "cuda"
    rebuilt = model_from(definition)
    assert rebuilt.definition().fingerprint == definition.fingerprint


def test_a_wrapped_network_keeps_its_wrapper_in_the_definition() -> None:
    orb = BUILTIN_MODELS["orb-v3"].definition()
    assert orb.is_wrapped and orb.identity["calculator_takes_device"] is True
    same_loader = GenericASECalculator(module="orb_models.forcefield.pretrained",
                                       class_name="orb_v3_conservative_inf_omat")
    assert same_loader.definition().fingerprint != orb.fingerprint
    rebuilt = model_from(orb)
    assert isinstance(rebuilt, PretrainedASECalculator)
    assert rebuilt.definition().fingerprint == orb.fingerprint


def test_a_subclass_that_builds_its_own_way_has_no_definition() -> None:
    class Tuned(GenericASECalculator):
        def build_local_calculator(self, **kwargs):
            return EMT()

    with pytest.raises(DefinitionError, match="build_local_calculator of its own"):
        Tuned(module="ase.calculators.lj", class_name="LennardJones").definition()


# ------------------------------------------------------------ which service


def status(models: dict | None = None, workers: list | None = None, autostart=True) -> dict:
    """A broker status as ``get_broker_status`` gives it, with just what routing reads."""
    return {"running": True, "broker": "ipc:///x", "autostart": {
        "autostart": autostart,
        "models": {name: {"fingerprint": fp} for name, fp in (models or {}).items()}},
        "status": {"workers": [{"service": name, "metadata": {"fingerprint": fp}}
                               for name, fp in (workers or [])]}}


def test_the_name_serves_when_it_is_the_same_model() -> None:
    mine = lj(name="my-lj")
    assert serving(mine, status({"my-lj": mine.fingerprint})) == "my-lj"


def test_a_name_taken_by_another_model_is_passed_over() -> None:
    mine = lj(name="emt")
    assert serving(mine, status({"emt": BUILTIN_MODELS["emt"].definition().fingerprint})) \
        is None
    own = status({"emt": "0" * 64, mine.own_service(): mine.fingerprint})
    assert serving(mine, own) == mine.own_service()


def test_an_unnamed_model_finds_the_service_that_is_it() -> None:
    emt = BUILTIN_MODELS["emt"].definition()
    unnamed = Definition(emt.identity)
    assert serving(unnamed, status({"emt": emt.fingerprint, "lj": "1" * 64})) == "emt"


def test_one_worker_of_another_model_under_the_name_spoils_it() -> None:
    mine = lj(name="my-lj")
    assert serving(mine, status({"my-lj": mine.fingerprint},
                                [("my-lj", mine.fingerprint), ("my-lj", "2" * 64)])) is None
    assert serving(mine, status(workers=[("my-lj", None)])) is None  # no definition to tell
    assert serving(mine, status(workers=[("my-lj", mine.fingerprint)])) == "my-lj"


# ------------------------------------------------------------ the worker's check


@pytest.fixture
def emt_handler():
    served = BUILTIN_MODELS["emt"].definition()
    calc = EMT()
    return make_handler(lambda atoms, properties: compute(calc, atoms, properties), served)


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
    handle = make_handler(lambda atoms, properties: compute(EMT(), atoms, properties), None)
    with pytest.raises(DefinitionMismatch, match="ask for it by name alone"):
        handle([bytes(f) for f in encode_request(bulk("Cu"), ["energy"], lj())])
    assert "energy" in decode_reply([bytes(f) for f in handle(
        [bytes(f) for f in encode_request(bulk("Cu"), ["energy"])])])


@pytest.mark.parametrize("model, says", [
    ("abc", "'model' must be an object"),
    ({"fingerprint": "ABC"}, "64 lowercase hex"),
    ({"fingerprint": "a" * 64, "definition": [1]}, "model.definition must be an object"),
])
def test_a_malformed_model_in_a_request_is_a_payload_error(model: Any, says: str) -> None:
    frames = [bytes(f) for f in encode_request(bulk("Cu"), ["energy"])]
    header = json.loads(frames[0])
    header["model"] = model
    with pytest.raises(PayloadError, match=says):
        read_request([json.dumps(header).encode(), *frames[1:]])
