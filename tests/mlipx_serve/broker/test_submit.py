"""serve-submit: the broker's sbatch options unless given, and its workers' options."""

from __future__ import annotations

import pytest

from mlipx_serve.broker.slurm import SlurmOptions
from mlipx_serve.broker.submit import merged_options, worker_options
from mlipx_serve.wire.serving import ServingSettings
from mlipx_serve.wire.status import ModelOffer, ServingStatus
from mlipx_serve.wire.worker_options import WorkerOptions

pytestmark = pytest.mark.timeout(10)


def test_serve_submit_takes_the_brokers_options_unless_given():
    settings = ServingStatus.from_json({
        "slurm": {"partition": "gpu", "gpus": 1, "time": "1:00:00", "account": None,
                  "extra": ["--mem=8G"]},
        "worker": WorkerOptions("", connect="/c.json", models_files=("/m.py",)).to_json(),
        "models": {"emt": {"serving": {"worker_timeout": 120.0, "batch_size": 4}},
                   "mine@12345678": {"defined_by": "client", "start_with": '{"x": 1}',
                                     "serving": {"batch_size": 4, "prefetch": 1}}}})
    assert merged_options(settings, None, None, None, None, []) == \
        SlurmOptions("gpu", 1, "1:00:00", None, ("--mem=8G",))
    assert merged_options(settings, "debug", 0, None, "chem", ["--hold"]) == \
        SlurmOptions("debug", 0, "1:00:00", "chem", ("--mem=8G", "--hold"))
    # the model's settings as the broker has them, under those given here
    assert worker_options(settings, "emt", ["/n.py"], ServingSettings()).arguments() == [
        "emt", "--connect", "/c.json", "--models", "/m.py", "--models", "/n.py",
        "--timeout", "120.0", "--batch-size", "4"]
    assert worker_options(settings, "mine@12345678", [], ServingSettings(
        worker_timeout=30.0, batch_size=2)) == WorkerOptions(
        "mine@12345678", connect="/c.json", models_files=("/m.py",), definition='{"x": 1}',
        timeout=30.0, batch_size=2, prefetch=1)
    assert worker_options(settings, "new", ["/n.py"], ServingSettings(prefetch=3)).prefetch == 3
    assert isinstance(settings.models["mine@12345678"], ModelOffer)

