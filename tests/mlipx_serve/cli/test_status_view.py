"""``mlipx serve-status``'s tables from the broker's status: pure functions on plain data."""

from __future__ import annotations

from rich.console import Console
from support import HELPERS, load_module

from mlipx_serve.cli.status_view import render
from mlipx_serve.client.broker_status import describe_wait

samples = load_module(HELPERS / "status_samples.py", "status_samples")
SERVICE = samples.SERVICE
running, connection, BUSY_TWO = samples.running, samples.connection, samples.BUSY_TWO


def rendered(status: dict) -> str:
    console = Console(width=220, record=True)
    console.print(render(status))
    return console.export_text()


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()
            if line.startswith("│")]


def test_status_tables_show_broker_models_and_workers():
    worker = {"id": "gpu7:42:1", "service": "emt", "dialect": "MDP/0.2", "state": "busy",
              "served": 7, "since": 65.0,
              "metadata": {"host": "gpu7", "pid": 42, "device": "GPU 1", "slurm_job": "981"}}
    by_hand = dict(worker, id="node:43:1", state="idle", metadata={})
    text = rendered(running({"emt": SERVICE}, autostart={"autostart": True, "models": {}},
                            workers=[worker, by_hand]))
    assert "ipc:///x/broker.ipc" in text and "1h 02m 05s" in text
    rows = table_rows(text)
    assert ["emt", "1", "1", "3", "7", "1", "", "", "", "no", "", "worker", "-"] in rows
    assert ["gpu7:42:1", "emt", "busy", "7", "0", "1m 05s", "gpu7", "GPU 1", "981"] in rows
    assert ["node:43:1", "emt", "idle", "7", "0", "1m 05s", "", "", ""] in rows  # an old worker


def test_a_worker_with_several_connections_is_one_row():
    batching = [connection(f"gpu7:42:{n}", "busy" if n < 3 else "idle", "gpu7:42", n, 60.0 + n,
                           "chgnet", host="gpu7", device="GPU 0", slurm_job=None)
                for n in range(1, 18)]
    alone = connection("node:43:1", "idle", served=1)
    rows = table_rows(rendered(running({"chgnet": SERVICE, "emt": SERVICE},
                                       workers=[*batching, alone])))
    assert ["gpu7:42", "chgnet", "2 of 17 busy", "153", "0", "1m 17s", "gpu7", "GPU 0", ""] \
        in rows
    assert ["node:43:1", "emt", "idle", "1", "0", "0m 05s", "", "", ""] in rows
    assert ["workers", "2 (18 connections)"] in rows
    assert ["chgnet", "0", "1", "3", "7", "1", "", "", "", "no", "", "worker",
            "-"] in rows  # processes, not connections
    idle = [dict(c, state="idle") for c in batching]
    assert "idle (17)" in [row[2] for row in table_rows(rendered(running({}, workers=idle)))
                           if len(row) > 2]


def test_status_shows_the_slurm_jobs_not_yet_ended():
    jobs = [{"job": "981", "model": "emt", "state": "PENDING", "reason": "Resources",
             "node": "", "by": "autostart", "age": 75.0},
            {"job": "982", "model": "mace", "state": "RUNNING", "reason": "None",
             "node": "gpu7", "by": "serve-submit", "age": 5.0},
            {"job": None, "model": "lj", "state": "SUBMITTING", "reason": "", "node": "",
             "by": "autostart", "age": 0.2}]
    autostart = {"autostart": True, "models": {}, "launcher": "slurm", "jobs": jobs,
                 "connection_file": "/home/u/.mlipx-serve/login1-ab12cd.json",
                 "slurm": {"partition": "gpu", "gpus": 1}}
    text = rendered(running({}, autostart))
    rows = table_rows(text)
    assert ["autostart", "on, as SLURM jobs, partition gpu, 1 GPU(s) per worker"] in rows
    assert ["connection file", "/home/u/.mlipx-serve/login1-ab12cd.json"] in rows
    assert ["981", "emt", "PENDING", "Resources", "1m 15s", "autostart"] in rows
    assert ["982", "mace", "RUNNING", "gpu7", "0m 05s", "serve-submit"] in rows
    assert ["", "lj", "SUBMITTING", "", "0m 00s", "autostart"] in rows
    waiting = running({}, {**autostart, "starting": {"emt": 75.0},
                           "progress": {"emt": "SLURM job 981 is PENDING (Resources)"}})
    assert describe_wait(waiting, "emt") == \
        "its worker has been starting for 75 s (SLURM job 981 is PENDING (Resources))"


def test_nothing_running_says_what_to_type():
    down = {"running": False, "broker": "ipc:///x/broker.ipc", "error": "timeout"}
    assert "mlipx serve-broker --autostart" in rendered(down)
    assert "mlipx serve emt" in rendered(running({}))


def test_a_worker_is_up_since_its_process_started_not_since_it_last_registered():
    # registered 2 s ago (its broker restarted, say), started 125 s before the status
    worker = connection("node:7:3", "idle", "node:7", since=2.0, host="node", device="cpu",
                        started=1_000_000.0)
    status = dict(running({"emt": SERVICE}, workers=[worker]), at=1_000_125.0)
    assert ["node:7", "emt", "idle", "0", "0", "2m 05s", "node", "cpu", ""] in \
        table_rows(rendered(status))


def test_a_request_that_waits_for_a_model_nobody_serves_is_shown_with_what_to_do():
    stuck = dict(SERVICE, workers=0, idle=0, busy=0, queued=1, served=0, failed=0)
    text = rendered(running({"emt": stuck, "nope": dict(stuck, queued=2)}))
    rows = table_rows(text)
    assert ["emt", "0", "0", "1", "0", "0", "", "", "", "no: start a worker", "", "", ""] in rows
    assert ["nope", "0", "0", "2", "0", "0", "", "", "", "no: start a worker", "", "", ""] in rows
    said = " ".join(text.split())
    assert "1 request(s) for 'emt' wait, and no worker serves it: start a worker with `mlipx " \
        "serve emt --broker ipc:///x/broker.ipc`; or restart the broker with --autostart" in said
    assert "`mlipx serve nope --broker ipc:///x/broker.ipc --models FILE`, FILE a models.py" \
        in said
    assert "No models yet" not in said


def test_what_workers_say_of_themselves_is_shown_as_it_is():
    worker = connection("n:1:1", "idle", "n:1", host="node[a7]", slurm_job="42[b]")
    assert "node[a7]" in rendered(running({"emt": SERVICE}, workers=[worker]))
    assert "42[b]" in rendered(running({"emt": SERVICE}, workers=[worker]))


def test_each_model_shows_its_definition_and_who_defined_it():
    lj = {"class_name": "LennardJones", "kwargs": {"sigma": 2.3}, "module": "ase.calculators.lj"}
    emt = {"class_name": "EMT", "kwargs": {}, "module": "ase.calculators.emt"}
    models = {"emt": {"extras": [], "autostart": True, "defined_by": "broker",
                      "fingerprint": "e" * 64, "definition": emt,
                      "serving": {"batch_size": 16, "batch_wait": 0.05, "max_workers": 2},
                      "devices": ["0", "1"], "max_workers": 4},
              "LennardJones@dc0de043": {"extras": [], "autostart": True,
                                        "defined_by": "client", "fingerprint": "d" * 64,
                                        "definition": lj}}
    workers = [connection("a:1:1", "idle", service="emt", fingerprint="e" * 64),
               connection("b:2:1", "idle", service="emt", fingerprint="f" * 64),
               connection("c:3:1", "idle", service="mine", fingerprint="c" * 64,
                          definition=lj)]
    text = rendered(running({"emt": SERVICE, "mine": SERVICE},
                            {"autostart": True, "models": models}, workers))
    rows = table_rows(text)
    assert ["LennardJones@dc0de043", "0", "0", "0", "0", "0", "", "", "", "yes", "1 worker",
            "client",
            "ase.calculators.lj:LennardJones sigma=2.3"] in rows
    assert ["mine", "1", "0", "3", "7", "1", "", "", "", "no", "", "worker",
            "ase.calculators.lj:LennardJones sigma=2.3"] in rows
    [emt_row] = [row for row in rows if row[0] == "emt"]
    assert emt_row[9:12] == ["yes", "batch 16 (0.05 s), 4 workers, GPU 0,1", "broker"]
    assert emt_row[12].startswith("ase.calculators.emt:EMT  (mixed: workers of 2")



def test_status_shows_who_waits_for_each_model():
    map_script = {"client": "node-2:4711:0f3a9c1e", "host": "node-2", "pid": 4711,
                  "queued": 30, "in_flight": 2, "served": 812, "failed": 0, "since": 75.0,
                  "waiting": 0.012}
    notebook = dict(map_script, client="laptop:99:aa", host="laptop", pid=99, queued=0,
                    in_flight=1, served=40)
    plain = dict(map_script, client="6c3d2a", host=None, pid=None, queued=1, in_flight=0,
                 served=0, waiting=3.5)
    emt = dict(SERVICE, clients=[map_script, plain, notebook], clients_active=4)
    rows = table_rows(rendered(running({"emt": emt})))
    assert ["emt", "node-2", "4711", "30", "2", "812", "12 ms", "1m 15s"] in rows
    assert ["emt", "laptop", "99", "0", "1", "40", "-", "1m 15s"] in rows
    assert ["emt", "6c3d2a", "", "1", "0", "0", "0m 03s", "1m 15s"] in rows
    assert ["emt", "... 1 more", "", "", "", "", "", ""] in rows
    assert "Clients" not in rendered(running({"emt": SERVICE}))  # nobody waits: no table


def test_models_count_structures_with_requests_beside_them_and_the_last_minute():
    emt = dict(SERVICE, queued=2, served=32, failed=1,
               units={"queued": 120, "in_flight": 64, "served": 2000, "failed": 1},
               recent={"seconds": 61.0, "units_per_second": 33.25, "wait_median": 0.0124,
                       "wait_p95": 0.031, "work_median": 0.0102, "work_p95": 1.5})
    rows = table_rows(rendered(running({"emt": emt}, workers=BUSY_TWO)))
    assert ["emt", "0", "2", "120 (2)", "2,000 (32)", "1", "33.2", "12 ms / 31 ms",
            "10 ms / 1.5 s", "no", "", "worker", "-"] in rows

