"""SLURM's commands as the broker uses them: command lines, output read back, job states in
words, the address the nodes reach."""

from __future__ import annotations

import pytest

from mlipx_serve.broker import slurm
from mlipx_serve.broker.cluster import reachable
from mlipx_serve.broker.slurm import SlurmOptions
from mlipx_serve.broker.slurm_launcher import SlurmJob

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


def test_the_workers_endpoint_is_announced_by_a_name_the_nodes_reach(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "login1")
    assert reachable("tcp://*:5555") == "tcp://login1:5555"
    assert reachable("tcp://0.0.0.0:5555") == "tcp://login1:5555"
    assert reachable("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555"

