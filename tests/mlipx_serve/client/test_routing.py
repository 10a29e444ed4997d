"""Which service a client sends a definition to, from the broker's status alone."""

from __future__ import annotations

from typing import Any

import pytest

from mlipx_serve.client.routing import served_as
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.wire.definition import Definition

pytestmark = pytest.mark.timeout(30)


def lj(sigma: float = 2.3, **rest: Any) -> Definition:
    return Definition.generic("ase.calculators.lj", "LennardJones", {"sigma": sigma}, **rest)


def status(models: dict | None = None, workers: list | None = None, autostart=True) -> dict:
    """A broker status as ``get_broker_status`` gives it, with just what routing reads."""
    return {"running": True, "broker": "ipc:///x", "autostart": {
        "autostart": autostart,
        "models": {name: {"fingerprint": fp} for name, fp in (models or {}).items()}},
        "status": {"workers": [{"service": name, "metadata": {"fingerprint": fp}}
                               for name, fp in (workers or [])]}}


def test_the_name_serves_when_it_is_the_same_model() -> None:
    mine = lj(name="my-lj")
    assert served_as(mine, status({"my-lj": mine.fingerprint})) == "my-lj"


def test_a_name_taken_by_another_model_is_passed_over() -> None:
    mine = lj(name="emt")
    assert served_as(mine, status({"emt": BUILTIN_MODELS["emt"].definition().fingerprint})) \
        is None
    own = status({"emt": "0" * 64, mine.own_service(): mine.fingerprint})
    assert served_as(mine, own) == mine.own_service()


def test_an_unnamed_model_finds_the_service_that_is_it() -> None:
    emt = BUILTIN_MODELS["emt"].definition()
    unnamed = Definition(emt.identity)
    assert served_as(unnamed, status({"emt": emt.fingerprint, "lj": "1" * 64})) == "emt"


def test_one_worker_of_another_model_under_the_name_spoils_it() -> None:
    mine = lj(name="my-lj")
    assert served_as(mine, status({"my-lj": mine.fingerprint},
                                [("my-lj", mine.fingerprint), ("my-lj", "2" * 64)])) is None
    assert served_as(mine, status(workers=[("my-lj", None)])) is None  # no definition to tell
    assert served_as(mine, status(workers=[("my-lj", mine.fingerprint)])) == "my-lj"

