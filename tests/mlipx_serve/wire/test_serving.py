"""Serving settings: checked where they are written, layered (a worker's command line over
the model's settings over the broker's options over the defaults), plain JSON."""

from __future__ import annotations

import pytest

from mlipx_serve import GenericASECalculator
from mlipx_serve.errors import DefinitionError, SettingsError
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.serving import DEFAULTS, ServingSettings

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("given, says", [
    ({"batch": 16}, "unknown serving setting(s) batch; the settings are batch_size, "
                    "batch_wait, max_workers, prefetch, gpus, worker_timeout"),
    ({"batch_size": 0}, "batch_size must be a whole number from 1 to 1024, not 0"),
    ({"batch_size": 2.5}, "batch_size must be a whole number from 1 to 1024"),
    ({"batch_size": 100_000}, "batch_size must be a whole number from 1 to 1024"),
    ({"max_workers": True}, "max_workers must be a whole number"),
    ({"prefetch": -1}, "prefetch must be a whole number from 0 to 64"),
    ({"batch_wait": "soon"}, "batch_wait must be a number"),
    ({"batch_wait": float("inf")}, "batch_wait must be a number from 0 to 10, not inf"),
    ({"batch_wait": float("nan")}, "batch_wait must be a number from 0 to 10, not nan"),
    ({"worker_timeout": float("inf")}, "worker_timeout must be a number from 0 to 1e"),
    ({"gpus": "some"}, 'gpus must be "all" or a list of GPU numbers'),
    ({"gpus": [0, -1]}, 'gpus must be "all" or a list of GPU numbers'),
    ([("batch_size", 2)], "serving must be a dict of settings, not a list"),
])
def test_settings_are_checked_where_they_are_written(given, says):
    with pytest.raises(SettingsError, match=says.replace("(", r"\(").replace(")", r"\)")):
        ServingSettings.of(given)
    with pytest.raises(SettingsError):
        GenericASECalculator(module="m", class_name="C", serving=given)


def test_each_level_is_taken_where_the_one_above_says_nothing():
    broker = ServingSettings(batch_size=2, max_workers=3).over(DEFAULTS)
    model = ServingSettings.of({"batch_size": 16, "gpus": [0, 1]})
    command_line = ServingSettings(batch_size=4)
    assert command_line.over(model.over(broker)) == ServingSettings(
        batch_size=4, batch_wait=0.01, max_workers=3, prefetch=0, gpus=(0, 1),
        worker_timeout=300.0)
    assert ServingSettings().over(broker) == broker


def test_settings_travel_as_json_with_a_definition_but_are_not_what_the_model_is():
    plain = GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones")
    batched = GenericASECalculator(module="ase.calculators.lj", class_name="LennardJones",
                                   serving={"batch_size": 16, "gpus": [1]})
    assert plain.definition().fingerprint == batched.definition().fingerprint
    sent = batched.definition().to_json()
    assert sent["serving"] == {"batch_size": 16, "gpus": [1]}
    assert Definition.from_json(sent).serving == {"batch_size": 16, "gpus": [1]}
    with pytest.raises(DefinitionError, match="unknown serving setting"):
        Definition.from_json({**sent, "serving": {"size": 1}})
    assert ServingSettings.of(sent["serving"]).to_json() == sent["serving"]
