"""What the broker's status says to a client: which models it offers, and why a request
waits."""

from __future__ import annotations

from support import HELPERS, load_module

from mlipx_serve.client.broker_status import available_models, describe_wait

samples = load_module(HELPERS / "status_samples.py", "status_samples")
SERVICE, BUSY_TWO = samples.SERVICE, samples.BUSY_TWO
running, connection = samples.running, samples.connection


def test_the_wait_is_explained_from_the_brokers_point_of_view():
    down = {"running": False, "broker": "ipc:///x/broker.ipc", "error": "timeout"}
    assert "no broker answers at ipc:///x/broker.ipc" in describe_wait(down, "emt")
    assert "start a worker with `mlipx serve emt --broker ipc:///x/broker.ipc`" in \
        describe_wait(running({}), "emt")  # a command that works: emt is built in
    assert "`mlipx serve mine --broker ipc:///x/broker.ipc --models FILE`, FILE a models.py" \
        in describe_wait(running({}), "mine")
    assert describe_wait(running({"emt": SERVICE}, workers=BUSY_TWO), "emt") == \
        "2 of 2 worker(s) busy, 3 request(s) queued"
    batching = [connection(f"a:1:{n}", "busy" if n == 1 else "idle", "a:1") for n in (1, 2)]
    assert describe_wait(running({"emt": SERVICE}, workers=batching), "emt") == \
        "1 of 1 worker(s) busy, 3 request(s) queued"
    starting = running({}, {"autostart": True, "models": {}, "starting": {"emt": 12.4}})
    assert "starting for 12 s" in describe_wait(starting, "emt")


def test_models_are_those_with_workers_and_those_that_can_be_started():
    idle = dict(SERVICE, workers=0, idle=0, busy=0)
    status = running({"emt": SERVICE, "gone": idle},
                     {"autostart": True, "models": {"lj": {"extras": [], "autostart": True}}},
                     BUSY_TWO)
    models = available_models(status)
    assert list(models) == ["emt", "lj"]
    assert models["emt"]["autostart"] is False and models["lj"]["workers"] == 0
    assert available_models({"running": False}) == {}

