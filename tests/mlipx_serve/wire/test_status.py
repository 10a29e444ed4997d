"""The record of ``mmi.mlipx``: what a broker writes, a client reads back, typed."""

from __future__ import annotations

import json

import pytest

from mlipx_serve.wire.status import JobRecord, ModelOffer, ServingStatus
from mlipx_serve.wire.worker_options import WorkerOptions

pytestmark = pytest.mark.timeout(10)


def test_a_status_goes_to_json_and_back():
    status = ServingStatus(
        autostart=True, models={"emt": ModelOffer([], "broker", "a" * 64, {"module": "m"},
                                                  "m:C"),
                                "mine@12345678": ModelOffer(
                                    ["mace"], "client", start_with="{}",
                                    serving={"batch_size": 16, "gpus": [0]}, devices=["0"],
                                    max_workers=2)},
        starting={"emt": 1.5}, progress={"emt": "loading"}, start_timeout=60.0,
        worker=WorkerOptions("", timeout=120.0, batch_size=4), launcher="slurm",
        broker_id="login-abc", connection_file="/c.json", log_dir="/logs",
        slurm={"partition": "gpu"}, jobs=[JobRecord("12", "emt", "PENDING", "Priority", "",
                                                    "autostart", 3.0)])
    assert ServingStatus.from_json(json.loads(json.dumps(status.to_json()))) == status


def test_no_record_is_a_broker_that_starts_nothing_and_new_keys_are_left():
    assert ServingStatus.from_json(None) == ServingStatus() and not ServingStatus().autostart
    newer = {"autostart": True, "models": {"emt": {"extras": [], "colour": "red"}},
             "something_new": [1]}
    read = ServingStatus.from_json(newer)
    assert read.autostart and read.models == {"emt": ModelOffer([])}
