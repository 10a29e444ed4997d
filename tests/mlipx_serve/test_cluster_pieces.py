"""The pure parts of running workers on a cluster: SLURM command lines and output, job
states in words, the connection file, and the options serve-submit merges."""

from __future__ import annotations

import stat

import pytest
import zmq

from mdp.security import ClientCurve
from mlipx_serve.broker import slurm
from mlipx_serve.broker.cluster import reachable
from mlipx_serve.broker.slurm import SlurmOptions
from mlipx_serve.broker.slurm_launcher import SlurmJob
from mlipx_serve.broker.submit import merged_options, worker_options
from mlipx_serve.errors import ServeError
from mlipx_serve.wire.connection import Connection, names_broker
from mlipx_serve.wire.private import cluster_dir
from mlipx_serve.wire.status import ModelOffer, ServingStatus
from mlipx_serve.wire.worker_options import WorkerOptions

pytestmark = pytest.mark.timeout(10)


def test_sbatch_gets_the_options_and_the_worker_as_its_script(tmp_path):
    options = SlurmOptions("gpu", 2, "8:00:00", "chem", ("--mem=32G", "--constraint=a100"))
    command = slurm.sbatch_command(options, "mlipx-serve.b1.emt", tmp_path, "emt")
    assert command == ["sbatch", "--parsable", "--job-name=mlipx-serve.b1.emt",
                       f"--output={tmp_path}/emt-%j.out", "--ntasks=1", "--partition=gpu",
                       "--gres=gpu:2", "--time=8:00:00", "--account=chem", "--mem=32G",
                       "--constraint=a100"]
    assert SlurmOptions().sbatch_args() == ["--ntasks=1"]
    script = slurm.batch_script(["/env/bin/python", "-m", "x", "it's"])
    assert script == "#!/bin/sh\nexec /env/bin/python -m x 'it'\"'\"'s'\n"


def test_job_ids_and_squeue_lines_are_read():
    assert slurm.parse_job_id("1234\n") == "1234"
    assert slurm.parse_job_id("1234;cluster2\n") == "1234"
    with pytest.raises(slurm.SlurmError, match="no job id"):
        slurm.parse_job_id("sbatch: error: nothing\n")
    rows = slurm.parse_squeue("12|mlipx-serve.b1.emt|PENDING|Priority|\n"
                              "13|mlipx-serve.b1.mace-mpa-0|RUNNING|None|gpu7\n"
                              "14|other|CANCELLED by 0|None|\n"
                              "garbage\n")
    assert [(r.id, r.state, r.reason, r.node, r.ended) for r in rows] == [
        ("12", "PENDING", "Priority", "", False), ("13", "RUNNING", "None", "gpu7", False),
        ("14", "CANCELLED", "None", "", True)]
    assert slurm.model_of(rows[1].name, "b1") == "mace-mpa-0"
    assert slurm.model_of(rows[1].name, "b2") is None
    assert slurm.model_of(rows[2].name, "b1") is None
    assert slurm.model_of("mlipx-serve.b1.", "b1") is None


def test_a_jobs_state_in_words():
    job = SlurmJob("emt", 0.0)
    assert job.ended() is None and job.progress() == "submitting its SLURM job"
    job.id, job.state, job.reason = "12", "PENDING", "Priority"
    assert job.progress() == "SLURM job 12 is PENDING (Priority)"
    assert job.timed_out(60) == ("SLURM job 12 was still PENDING (Priority) after 60 s "
                                 "(--worker-start-timeout); it was cancelled")
    job.state, job.reason, job.node = "RUNNING", "None", "gpu7"
    assert job.progress() == "SLURM job 12 is RUNNING on gpu7" and job.ended() is None
    job.state, job.reason = "FAILED", "NonZeroExitCode"
    assert job.ended() == "SLURM job 12 ended FAILED (NonZeroExitCode)"
    job.state = "GONE"
    assert "gone from squeue" in job.ended()
    refused = SlurmJob("emt", 0.0, error="sbatch failed: invalid partition specified")
    assert refused.ended() == "sbatch failed: invalid partition specified"


def test_serve_submit_takes_the_brokers_options_unless_given():
    settings = ServingStatus.from_json({
        "slurm": {"partition": "gpu", "gpus": 1, "time": "1:00:00", "account": None,
                  "extra": ["--mem=8G"]},
        "worker": WorkerOptions("", connect="/c.json", timeout=120.0, batch_size=4,
                                models_files=("/m.py",)).to_json(),
        "models": {"mine@12345678": {"defined_by": "client", "start_with": '{"x": 1}'}}})
    assert merged_options(settings, None, None, None, None, []) == \
        SlurmOptions("gpu", 1, "1:00:00", None, ("--mem=8G",))
    assert merged_options(settings, "debug", 0, None, "chem", ["--hold"]) == \
        SlurmOptions("debug", 0, "1:00:00", "chem", ("--mem=8G", "--hold"))
    assert worker_options(settings, "emt", ["/n.py"], None).arguments() == [
        "emt", "--connect", "/c.json", "--models", "/m.py", "--models", "/n.py",
        "--timeout", "120.0", "--batch-size", "4"]
    assert worker_options(settings, "mine@12345678", [], 30.0) == WorkerOptions(
        "mine@12345678", connect="/c.json", models_files=("/m.py",), definition='{"x": 1}',
        timeout=30.0, batch_size=4)
    assert isinstance(settings.models["mine@12345678"], ModelOffer)


def test_the_workers_endpoint_is_announced_by_a_name_the_nodes_reach(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "login1")
    assert reachable("tcp://*:5555") == "tcp://login1:5555"
    assert reachable("tcp://0.0.0.0:5555") == "tcp://login1:5555"
    assert reachable("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555"


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_the_connection_file_is_private_and_gives_its_keys(tmp_path):
    server_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    connection = Connection("login1-abc", "tcp://login1:5555", server_public.decode(),
                            public.decode(), secret.decode())
    path = tmp_path / "cluster" / "login1-abc.json"
    connection.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Connection.read(path) == connection
    assert names_broker(path, "login1-abc") and not names_broker(path, "login1-def")
    curve = ClientCurve(*Connection.read(path).keys())  # straight to a socket: no key file
    assert (curve.server_key, curve.public_key, curve.secret_key) == \
        (server_public, public, secret)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    path.unlink()
    assert not names_broker(path, "login1-abc")
    with pytest.raises(ServeError, match="does not exist: its broker has stopped"):
        Connection.read(path)
    path.write_text('{"format": 1, "endpoint": "tcp://x:1"}')
    with pytest.raises(ServeError, match="lacks 'broker_id'"):
        Connection.read(path)
    path.write_text("[]")
    with pytest.raises(ServeError, match="is not a connection file"):
        Connection.read(path)


def test_the_cluster_directory_is_private_and_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIPX_SERVE_CLUSTER_DIR", str(tmp_path / "shared"))
    made = cluster_dir()
    assert made == tmp_path / "shared" and stat.S_IMODE(made.stat().st_mode) == 0o700
    monkeypatch.delenv("MLIPX_SERVE_CLUSTER_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cluster_dir() == tmp_path / "home" / ".mlipx-serve"
    (tmp_path / "planted").symlink_to(tmp_path / "shared")
    monkeypatch.setenv("MLIPX_SERVE_CLUSTER_DIR", str(tmp_path / "planted"))
    with pytest.raises(PermissionError, match="MLIPX_SERVE_CLUSTER_DIR"):
        cluster_dir()
