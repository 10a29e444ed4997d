"""The serving half of a definition: which calculator ``get_calculator()`` hands back."""

from __future__ import annotations

import logging

import pytest
from ase.calculators.emt import EMT

from mlipx_serve import GenericASECalculator
from mlipx_serve.client import servable
from mlipx_serve.errors import DefinitionError
from mlipx_serve.models import definitions
from mlipx_serve.models.catalogue import BUILTIN_MODELS

pytestmark = pytest.mark.timeout(30)


def emt() -> GenericASECalculator:
    return GenericASECalculator(module="ase.calculators.emt", class_name="EMT", name="emt")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), (" on ", True),
     ("0", False), ("false", False), ("no", False), ("off", False), ("", False)],
)  # fmt: skip
def test_use_serve_env_parsing(value: str, expected: bool) -> None:
    assert servable.use_serve_from_env({"MLIPX_USE_SERVE": value}) is expected


def test_use_serve_env_default_and_junk(caplog: pytest.LogCaptureFixture) -> None:
    assert servable.use_serve_from_env({}) is False
    with caplog.at_level(logging.WARNING):
        assert servable.use_serve_from_env({"MLIPX_USE_SERVE": "maybe"}) is False
    assert "maybe" in caplog.text


@pytest.fixture
def serve_hook(monkeypatch: pytest.MonkeyPatch):
    calls = []

    def install(result: object):
        def fake(model, *, call_kwargs, fallback):
            calls.append((model, call_kwargs))
            return result

        monkeypatch.setattr(servable, "served_calculator_or_none", fake)
        return calls

    return install


def test_env_selects_served_calculator(monkeypatch: pytest.MonkeyPatch, serve_hook) -> None:
    sentinel = object()
    calls = serve_hook(sentinel)
    monkeypatch.setenv("MLIPX_USE_SERVE", "yes")
    model = emt()
    assert model.get_calculator(foo=1) is sentinel
    assert calls == [(model, {"foo": 1})]


def test_not_served_means_local(monkeypatch: pytest.MonkeyPatch, serve_hook) -> None:
    serve_hook(None)
    monkeypatch.setenv("MLIPX_USE_SERVE", "1")
    assert isinstance(emt().get_calculator(), EMT)


def test_explicit_argument_beats_env(monkeypatch: pytest.MonkeyPatch, serve_hook) -> None:
    calls = serve_hook(object())
    monkeypatch.setenv("MLIPX_USE_SERVE", "1")
    assert isinstance(emt().get_calculator(use_serve=False), EMT)
    monkeypatch.setenv("MLIPX_USE_SERVE", "0")
    assert not isinstance(emt().get_calculator(use_serve=True), EMT)
    assert len(calls) == 1


def test_env_unset_means_local(monkeypatch: pytest.MonkeyPatch, serve_hook) -> None:
    calls = serve_hook(object())
    monkeypatch.delenv("MLIPX_USE_SERVE", raising=False)
    assert isinstance(emt().get_calculator(), EMT)
    assert calls == []


def test_an_unnamed_model_goes_to_the_bus_too(serve_hook) -> None:
    sentinel = object()
    calls = serve_hook(sentinel)
    model = GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                 kwargs={"sigma": 2.3})
    assert model.get_calculator(use_serve=True) is sentinel
    assert calls == [(model, {})]


def test_the_served_class_is_the_same_model_as_the_definition() -> None:
    served = emt()
    assert isinstance(served, definitions.GenericASECalculator)
    assert served.definition().fingerprint == BUILTIN_MODELS["emt"].definition().fingerprint


def test_a_definition_of_models_alone_builds_here_whatever_the_environment(
        monkeypatch: pytest.MonkeyPatch, serve_hook) -> None:
    calls = serve_hook(object())
    monkeypatch.setenv("MLIPX_USE_SERVE", "1")
    assert isinstance(BUILTIN_MODELS["emt"].get_calculator(), EMT)
    assert calls == []


def test_a_subclass_that_builds_its_own_way_has_no_definition() -> None:
    class Mine(GenericASECalculator):
        def get_calculator(self, **kwargs):
            return EMT()

    with pytest.raises(DefinitionError, match="get_calculator of its own"):
        Mine(module="ase.calculators.emt", class_name="EMT").definition()


def test_a_definition_of_models_alone_refuses_to_be_served_and_says_which_to_use() -> None:
    with pytest.raises(DefinitionError, match="mlipx_serve.GenericASECalculator"):
        BUILTIN_MODELS["emt"].get_calculator(use_serve=True)
