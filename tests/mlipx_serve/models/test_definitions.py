"""What each kind of model definition is: merged arguments, the device left out, a wrapper
kept, relative paths made absolute where they were written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from ase.calculators.emt import EMT

from mlipx_serve.errors import DefinitionError
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.models.definitions import GenericASECalculator, PretrainedASECalculator, model_from
from mlipx_serve.models.models_file import load_models_file

pytestmark = pytest.mark.timeout(30)


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
                                                   kwargs={"path": "./lj.json", "up": "../x",
                                                           "word": "lj.json"})}
    """))
    monkeypatch.chdir(tmp_path)  # elsewhere: the file's directory counts, not this one
    [entry] = load_models_file(folder / "models.py").values()
    assert entry.kwargs == {"path": str(folder / "lj.json"), "up": str(tmp_path / "x"),
                            "word": "lj.json"}  # (only explicit paths are paths)


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

