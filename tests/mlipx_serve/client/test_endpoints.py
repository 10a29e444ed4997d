"""The client API refuses a malformed endpoint where it enters, and serving falls back saying so."""

from __future__ import annotations

import logging

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mlipx_serve import (
    Models,
    RemoteCalculator,
    evaluate,
    get_broker_status,
    serve_model,
    served_calculator_or_none,
)
from mlipx_serve.errors import EndpointError

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("enter", [
    lambda endpoint: RemoteCalculator("emt", endpoint),
    lambda endpoint: Models(endpoint),
    lambda endpoint: get_broker_status(endpoint),
    lambda endpoint: evaluate("emt", [bulk("Cu")], broker=endpoint),
    lambda endpoint: serve_model("my-emt", EMT, broker=endpoint),
], ids=["RemoteCalculator", "Models", "get_broker_status", "evaluate", "serve_model"])
def test_the_api_refuses_a_malformed_endpoint_at_once(enter):
    with pytest.raises(EndpointError, match="'http://localhost:5555' is not a broker endpoint"):
        enter("http://localhost:5555")


def test_serving_falls_back_with_one_warning_naming_the_endpoint(caplog):
    with caplog.at_level(logging.WARNING):
        assert served_calculator_or_none("emt", "http://localhost:5555") is None
    named = [r for r in caplog.records if "'http://localhost:5555'" in r.getMessage()]
    assert len(named) == 1 and "tcp://HOST:PORT" in named[0].getMessage()

