"""Model registries and GenericASECalculator, without sockets or real MLIPs."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from mlipx_serve import environment
from mlipx_serve.errors import RegistryError
from mlipx_serve.models import mlipx_shim
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.models.definitions import (
    GenericASECalculator,
    ModelUnavailableError,
    PretrainedASECalculator,
    resolve_device,
)
from mlipx_serve.models.extras import EXTRAS, model_extras
from mlipx_serve.models.models_file import load_models_file, load_registry

pytestmark = pytest.mark.timeout(30)

MLIPX_STYLE = """
import dataclasses

import mlipx
from mlipx import GenericASECalculator
from mlipx.nodes.generic_ase import Device

ALL_MODELS = {}
ALL_MODELS["emt"] = GenericASECalculator(module="ase.calculators.emt", class_name="EMT")
ALL_MODELS["lj"] = mlipx.GenericASECalculator(
    module="ase.calculators.lj", class_name="LennardJones", kwargs={"sigma": 2.3}
)


@dataclasses.dataclass
class Custom:
    path: str

    def get_calculator(self, **kwargs):
        from ase.calculators.emt import EMT

        return EMT()


@dataclasses.dataclass(frozen=True)
class FrozenNamed:
    name: str | None = None

    def get_calculator(self, **kwargs):
        from ase.calculators.emt import EMT

        return EMT()


@dataclasses.dataclass
class OrbLike:
    name: str
    device: Device | None = None

    def get_calculator(self, **kwargs):
        return Device.resolve_auto() if self.device == Device.AUTO else self.device


ALL_MODELS["custom"] = Custom(path="x")
ALL_MODELS["frozen"] = FrozenNamed()
ALL_MODELS["orb-like"] = OrbLike(name="orb_v2", device="auto")
ALL_MODELS["orca"] = mlipx.OrcaSinglePoint(orcasimpleinput="PBE", orca_shell="orca")
MODELS = {"emt": ALL_MODELS["emt"]}
"""


def write(tmp_path: Path, text: str, name: str = "models.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def cu() -> object:
    return bulk("Cu", "fcc", a=3.6, cubic=True)


def energy(calc: object) -> float:
    atoms = cu()
    atoms.calc = calc
    return atoms.get_potential_energy()


@pytest.fixture
def no_mlipx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shim path must be taken even on a machine where mlipx is installed."""
    monkeypatch.delitem(sys.modules, "mlipx", raising=False)
    monkeypatch.setattr(mlipx_shim, "mlipx_installed", lambda: False)


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch):
    def install(cuda: bool) -> None:
        cuda_ns = types.SimpleNamespace(is_available=lambda: cuda)
        monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda_ns))

    return install


@pytest.fixture
def fake_mlip(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module whose factories record what they were called with."""
    module = types.ModuleType("fake_mlip_pkg")

    def factory(**kwargs):
        return ("calc", kwargs)

    def loader(**kwargs):
        return ("model", kwargs)

    class Wrapper:
        def __init__(self, model, **kwargs):
            self.model, self.kwargs = model, kwargs

    module.factory, module.loader, module.Wrapper = factory, loader, Wrapper
    monkeypatch.setitem(sys.modules, "fake_mlip_pkg", module)
    return module


# -- loading models files -------------------------------------------------------------


def test_mlipx_style_file_loads_with_shim(tmp_path: Path, no_mlipx: None) -> None:
    models = load_models_file(write(tmp_path, MLIPX_STYLE))
    assert set(models) == {"emt", "lj", "custom", "frozen", "orb-like", "orca"}
    assert isinstance(models["emt"], GenericASECalculator)
    assert models["emt"].name == "emt"
    assert models["lj"].kwargs == {"sigma": 2.3}
    assert models["custom"].name == "custom"
    assert models["frozen"].name == "frozen"
    assert models["orca"].name == "orca"
    assert "mlipx" not in sys.modules, "the shim must not outlive the load"


def test_name_set_by_the_entry_is_kept(tmp_path: Path, no_mlipx: None) -> None:
    models = load_models_file(write(tmp_path, MLIPX_STYLE))
    assert models["orb-like"].name == "orb_v2"


def test_device_shim_keeps_working_after_load(tmp_path: Path, no_mlipx: None, fake_torch) -> None:
    models = load_models_file(write(tmp_path, MLIPX_STYLE))
    fake_torch(cuda=True)
    assert models["orb-like"].get_calculator() == "cuda"


def test_emt_from_file_matches_ase(tmp_path: Path, no_mlipx: None) -> None:
    models = load_models_file(write(tmp_path, MLIPX_STYLE))
    expected = energy(EMT())
    assert energy(models["emt"].get_calculator(use_serve=False)) == pytest.approx(expected)
    assert energy(models["custom"].get_calculator()) == pytest.approx(expected)


def test_lj_kwargs_reach_the_calculator(tmp_path: Path, no_mlipx: None) -> None:
    models = load_models_file(write(tmp_path, MLIPX_STYLE))
    calc = models["lj"].get_calculator(use_serve=False)
    assert isinstance(calc, LennardJones)
    assert calc.parameters["sigma"] == 2.3


def test_mlipx_only_entry_explains_itself(tmp_path: Path, no_mlipx: None) -> None:
    models = load_models_file(write(tmp_path, MLIPX_STYLE))
    with pytest.raises(ModelUnavailableError, match="uv pip install mlipx"):
        models["orca"].get_calculator()


def test_unknown_mlipx_name_is_a_registry_error(tmp_path: Path, no_mlipx: None) -> None:
    path = write(tmp_path, "import mlipx\nALL_MODELS = {'x': mlipx.NoSuchThing()}\n")
    with pytest.raises(RegistryError, match="NoSuchThing"):
        load_models_file(path)


def test_shared_entry_gets_one_name_per_key(tmp_path: Path, no_mlipx: None) -> None:
    text = """
    from mlipx import GenericASECalculator
    emt = GenericASECalculator(module="ase.calculators.emt", class_name="EMT")
    ALL_MODELS = {"a": emt, "b": emt}
    """
    models = load_models_file(write(tmp_path, text))
    assert (models["a"].name, models["b"].name) == ("a", "b")


def test_installed_mlipx_entries_are_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dataclasses.dataclass
    class RealGeneric:  # the shape of mlipx.nodes.generic_ase.GenericASECalculator
        module: str
        class_name: str
        kwargs: dict | None = None
        device: str | None = None
        spec: str | None = None

        def get_calculator(self, **kwargs):
            raise AssertionError("the adopted copy must be used")

    RealGeneric.__module__ = "mlipx.nodes.generic_ase"
    RealGeneric.__name__ = RealGeneric.__qualname__ = "GenericASECalculator"
    fake = types.ModuleType("mlipx")
    fake.GenericASECalculator = RealGeneric
    monkeypatch.setitem(sys.modules, "mlipx", fake)
    text = """
    import mlipx
    ALL_MODELS = {"emt": mlipx.GenericASECalculator(module="ase.calculators.emt", class_name="EMT")}
    """
    models = load_models_file(write(tmp_path, text))
    assert isinstance(models["emt"], GenericASECalculator)
    assert models["emt"].name == "emt"
    assert energy(models["emt"].get_calculator(use_serve=False)) == pytest.approx(energy(EMT()))


# -- registry errors ------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        load_models_file(tmp_path / "nope.py")


def test_no_all_models(tmp_path: Path) -> None:
    path = write(tmp_path, "MODELS = {}\n")
    with pytest.raises(RegistryError, match="no ALL_MODELS") as info:
        load_models_file(path)
    assert str(path) in str(info.value)


def test_all_models_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="list, not a mapping"):
        load_models_file(write(tmp_path, "ALL_MODELS = ['emt']\n"))


def test_entry_without_get_calculator(tmp_path: Path) -> None:
    path = write(tmp_path, "ALL_MODELS = {'broken': 42}\n")
    with pytest.raises(RegistryError, match=r"ALL_MODELS\['broken'\] is a int") as info:
        load_models_file(path)
    assert str(path) in str(info.value)


def test_file_that_raises(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="failed to run: ZeroDivisionError"):
        load_models_file(write(tmp_path, "1 / 0\n"))


def test_registry_error_is_a_value_error() -> None:
    assert issubclass(RegistryError, ValueError)


# -- the registry ---------------------------------------------------------------------


def test_builtin_models_are_named_and_known_extras() -> None:
    for key in ("mace-mpa-0", "7net-0", "chgnet", "mattersim", "orb-v3", "emt", "lj"):
        assert key in BUILTIN_MODELS
    for key, model in BUILTIN_MODELS.items():
        assert model.name == key
        assert callable(model.get_calculator)
        assert all(extra in EXTRAS for extra in model_extras(model)), key
    assert model_extras(BUILTIN_MODELS["emt"]) == []
    assert model_extras(BUILTIN_MODELS["lj"]) == []


def test_builtin_emt_matches_ase() -> None:
    calc = BUILTIN_MODELS["emt"].get_calculator(use_serve=False)
    assert energy(calc) == pytest.approx(energy(EMT()))


def constant_models(tmp_path: Path, filename: str, keys: list[str], value: object) -> Path:
    """A models file whose entries' calculators are just ``value``."""
    text = f"""
    class Constant:
        def get_calculator(self, **kwargs):
            return {value!r}

    ALL_MODELS = {{key: Constant() for key in {keys!r}}}
    """
    return write(tmp_path, text, filename)


def test_files_override_builtins_in_order(tmp_path: Path) -> None:
    first = constant_models(tmp_path, "a.py", ["emt", "mine"], 1)
    second = constant_models(tmp_path, "b.py", ["mine"], 2)
    models = load_registry([first, second])
    assert models["emt"].get_calculator() == 1
    assert models["mine"].get_calculator() == 2
    assert "mace-mpa-0" in models


def test_registry_files_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = constant_models(tmp_path, "a.py", ["a"], "a")
    b = constant_models(tmp_path, "b.py", ["b"], "b")
    monkeypatch.setenv(environment.MODELS, f"{a}{os.pathsep}{b}")
    models = load_registry()
    assert models["a"].get_calculator() == "a"
    assert models["b"].get_calculator() == "b"
    assert models["a"].name == "a"


def test_registry_without_files_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(environment.MODELS, raising=False)
    assert load_registry() == BUILTIN_MODELS


def test_model_extras() -> None:
    assert model_extras(object()) == []
    assert model_extras(types.SimpleNamespace(extra=["orb"])) == ["orb"]
    inferred = GenericASECalculator(module="mace.calculators", class_name="mace_mp")
    assert model_extras(inferred) == ["mace"]


# -- devices --------------------------------------------------------------------------


def test_auto_device_with_cuda(fake_torch) -> None:
    fake_torch(cuda=True)
    assert resolve_device("auto") == "cuda"


def test_auto_device_without_cuda(fake_torch) -> None:
    fake_torch(cuda=False)
    assert resolve_device("auto") == "cpu"


def test_auto_device_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    assert resolve_device("auto") == "cpu"


@pytest.mark.parametrize("device", [None, "cpu", "cuda", "cuda:1"])
def test_explicit_device_passes_through_without_torch(
    monkeypatch: pytest.MonkeyPatch, device: str | None
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    assert resolve_device(device) == device


def test_device_is_passed_only_when_set(fake_mlip: types.ModuleType, fake_torch) -> None:
    fake_torch(cuda=True)
    plain = GenericASECalculator(module="fake_mlip_pkg", class_name="factory", kwargs={"a": 1})
    assert plain.build_local_calculator() == ("calc", {"a": 1})
    auto = dataclasses.replace(plain, device="auto")
    assert auto.build_local_calculator() == ("calc", {"a": 1, "device": "cuda"})


def test_call_kwargs_win(fake_mlip: types.ModuleType) -> None:
    model = GenericASECalculator(
        module="fake_mlip_pkg", class_name="factory", kwargs={"a": 1}, device="cpu"
    )
    built = model.build_local_calculator(a=2, device="cuda:1")
    assert built == ("calc", {"a": 2, "device": "cuda:1"})


def test_pretrained_wraps_loaded_model(fake_mlip: types.ModuleType) -> None:
    model = PretrainedASECalculator(
        module="fake_mlip_pkg",
        class_name="loader",
        kwargs={"weights": "w"},
        device="cpu",
        calculator="fake_mlip_pkg:Wrapper",
        calculator_kwargs={"x": 1},
        calculator_takes_device=True,
    )
    calc = model.build_local_calculator()
    assert calc.model == ("model", {"weights": "w", "device": "cpu"})
    assert calc.kwargs == {"x": 1, "device": "cpu"}


# -- missing packages -----------------------------------------------------------------


def test_unavailable_names_extra_and_commands() -> None:
    model = GenericASECalculator(
        module="no_such_mlip_pkg.calculators", class_name="Calc", extra=["mace"], name="m"
    )
    with pytest.raises(ModelUnavailableError) as info:
        model.get_calculator(use_serve=False)
    message = str(info.value)
    assert "no_such_mlip_pkg.calculators" in message
    assert "uv pip install 'mlipx-serve[mace]'" in message
    assert "mace-torch" in message
    assert "mlipx serve m" in message
    assert isinstance(info.value, ImportError)
    assert info.value.extras == ["mace"]
    assert not model.available


def test_unavailable_without_extra_still_says_what_is_missing() -> None:
    model = GenericASECalculator(module="no_such_mlip_pkg", class_name="Calc")
    with pytest.raises(ModelUnavailableError, match="provides 'no_such_mlip_pkg'"):
        model.build_local_calculator()


def test_unknown_class_name_is_clear() -> None:
    model = GenericASECalculator(module="ase.calculators.emt", class_name="Nope", name="x")
    with pytest.raises(AttributeError, match="'ase.calculators.emt' has no 'Nope'"):
        model.build_local_calculator()


def test_spec_is_metadata_not_an_argument(fake_mlip: types.ModuleType) -> None:
    model = GenericASECalculator(module="fake_mlip_pkg", class_name="factory", spec="emt")
    assert model.build_local_calculator() == ("calc", {})
    assert GenericASECalculator(module="ase", class_name="Atoms").get_spec() is None
