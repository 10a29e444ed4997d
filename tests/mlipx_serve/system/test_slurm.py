"""Workers as SLURM jobs, against a real single-node SLURM (``tests/slurm_cluster.py``).

The broker runs with ``--launcher slurm``: scripts use its private ipc endpoint, the jobs'
workers reach it over tcp with CURVE through the connection file. SLURM runs the jobs on
this machine, as it would on a GPU node (two fake GPUs: SLURM sets CUDA_VISIBLE_DEVICES).
Every test leaves no job behind (the ``slurm`` fixture checks and cancels) and no process
(``serve_system``). Where SLURM cannot run (not root, no apt), the tests skip saying why.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from support import HELPERS, load_module

from mdp.client import Client
from mdp.errors import RequestTimeout, ServiceStartFailed
from mlipx_serve import RemoteCalculator, get_broker_status
from mlipx_serve.errors import ServingError

if TYPE_CHECKING:
    from conftest import ServeSystem

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

MODELS_FILE = HELPERS / "models.py"
MLIPX = [sys.executable, "-m", "mlipx_serve.cli"]
rattled_cu = load_module(HELPERS / "client.py", "mlipx_serve_slurm_client").rattled_cu


class SlurmBroker:
    """An autostart broker that launches SLURM jobs, and where to find what it wrote."""

    def __init__(self, system: ServeSystem, slurm, *options: str):
        self.system = system
        self.slurm = slurm
        self.cluster_dir = system.directory / "cluster"  # the "shared filesystem"
        self.env = {**slurm.env, "MLIPX_SERVE_CLUSTER_DIR": str(self.cluster_dir)}
        self.endpoint = system.ipc("broker.ipc")
        args = [*MLIPX, "serve-broker", "--path", self.endpoint, "--autostart",
                "--launcher", "slurm", "--workers-bind", "tcp://127.0.0.1:0",
                "--slurm-poll", "0.3", "--heartbeat", "0.3", *options]
        self.proc = system.spawn("broker", args, **self.env)
        system.brokers[self.endpoint] = self.proc
        system.wait_until(self._answers, f"a SLURM broker at {self.endpoint}")

    def _answers(self) -> bool:
        assert self.proc.alive(), f"the broker exited early:\n{self.proc.log()}"
        return self.status()["running"]

    def status(self) -> dict:
        return get_broker_status(self.endpoint, timeout=1.0)

    def settings(self) -> dict:
        return self.status()["autostart"]

    def jobs(self) -> list[dict]:
        return self.settings().get("jobs", [])

    @property
    def connection_file(self) -> Path:
        return Path(self.settings()["connection_file"])

    def run(self, *args: str, timeout: float = 60.0):
        return self.system.run(*MLIPX, *args, "--broker", self.endpoint, timeout=timeout,
                               **self.env)

    def stop(self) -> int:
        return self.system.brokers.pop(self.endpoint).end()

    def wait_jobs(self, what: str, condition) -> list[dict]:
        return self.system.wait_until(lambda: (lambda jobs: jobs if condition(jobs) else None)(
            self.jobs()), what)


def emt_results(calc) -> tuple:
    atoms = rattled_cu(7)
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def assert_same_as_local(calc) -> None:
    served, local = emt_results(calc), emt_results(EMT())
    assert served[0] == local[0]
    for a, b in zip(served[1:], local[1:], strict=True):
        assert (a == b).all()


def start_failure(endpoint: str, model: str) -> ServiceStartFailed:
    with pytest.raises(ServingError) as caught:
        emt_results(RemoteCalculator(model, endpoint, timeout=60))
    assert isinstance(caught.value.__cause__, ServiceStartFailed)
    return caught.value.__cause__


def our_active_jobs(slurm, broker: SlurmBroker) -> list[str]:
    prefix = f"mlipx-serve.{broker.settings()['broker_id']}."
    return [line for line in slurm.active_jobs() if line.split("|")[1].startswith(prefix)]


# ------------------------------------------------------------ serving


def test_a_slurm_job_serves_emt_exactly_and_ends_with_its_broker(serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm, "--slurm-gpus-per-worker", "1")
    connection_file = broker.connection_file
    assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(connection_file.parent.stat().st_mode) == 0o700
    with RemoteCalculator("emt", broker.endpoint, timeout=60) as calc:  # plain ipc
        assert_same_as_local(calc)
    run = broker.run("serve-status", "--json")
    assert run.returncode == 0, run.stderr
    [worker] = json.loads(run.stdout)["status"]["workers"]
    job = worker["metadata"]["slurm_job"]
    assert worker["metadata"]["device"] == "GPU 0"  # SLURM's own choice of GPU
    [listed] = our_active_jobs(slurm, broker)
    assert listed.split("|")[0] == job and listed.split("|")[2] == "RUNNING"
    shown = broker.run("serve-status")
    assert job in shown.stdout and "GPU 0" in shown.stdout, shown.stdout
    endpoint = json.loads(connection_file.read_text())["endpoint"]
    with Client(endpoint, timeout=0.5, retries=0) as stranger, pytest.raises(RequestTimeout):
        stranger.request("mmi.service", "emt")  # the tcp side speaks only CURVE
    assert broker.stop() == 0
    serve_system.wait_until(lambda: not slurm.active_jobs(), "the broker's job to end")
    assert not connection_file.exists()


def test_serve_submit_adds_workers_that_the_broker_shows_and_cancels(serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm)
    held = broker.run("serve-submit", "emt", "--slurm-option=--hold")
    assert held.returncode == 0, held.stderr
    [pending] = held.stdout.split()
    submitted = broker.run("serve-submit", "emt", "--count", "2")
    assert submitted.returncode == 0, submitted.stderr
    running = submitted.stdout.split()
    assert len(running) == 2
    serve_system.wait_workers(broker.endpoint, "emt", 2)
    workers = serve_system.workers_of(broker.endpoint, "emt")
    assert sorted(w["metadata"]["slurm_job"] for w in workers) == sorted(running)
    jobs = broker.wait_jobs("the held job among the broker's jobs", lambda jobs: any(
        job["job"] == pending for job in jobs))
    [held_job] = [job for job in jobs if job["job"] == pending]
    assert held_job["state"] == "PENDING" and held_job["by"] == "serve-submit"
    assert "JobHeldUser" in broker.run("serve-status").stdout
    with RemoteCalculator("emt", broker.endpoint, timeout=60) as calc:
        assert_same_as_local(calc)
    settings = broker.settings()
    assert broker.stop() == 0
    prefix = f"mlipx-serve.{settings['broker_id']}."
    serve_system.wait_until(lambda: not [line for line in slurm.active_jobs()
                                         if prefix in line], "the broker to cancel its jobs")


def test_a_script_in_another_job_reaches_the_broker_through_the_connection_file(
        serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm)
    script = serve_system.run("srun", "--job-name=pipeline", sys.executable,
                              str(HELPERS / "use_serve.py"), MLIPX_USE_SERVE="true",
                              MLIPX_SERVE_CONNECT=str(broker.connection_file), **slurm.env)
    assert script.returncode == 0, script.stderr
    kind, energy = script.stdout.split()
    atoms = bulk("Cu", cubic=True)
    atoms.calc = EMT()
    assert kind == "RemoteCalculator" and float(energy) == atoms.get_potential_energy()
    assert serve_system.service(broker.endpoint, "emt")["served"] == 1


# ------------------------------------------------------------ failures reach the client


def test_a_cancelled_job_reaches_the_waiting_client(serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm, "--slurm-option=--hold")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(start_failure, broker.endpoint, "emt")
        [job] = broker.wait_jobs("squeue to show the job held", lambda jobs: jobs
                                 and jobs[0]["reason"] == "JobHeldUser")
        assert job["state"] == "PENDING" and job["by"] == "autostart"
        assert slurm.run("scancel", job["job"]).returncode == 0
        error = waiting.result(timeout=30)
    said = str(error)
    assert f"SLURM job {job['job']} ended CANCELLED" in said
    assert "before it registered" in said and "Last lines of its output" in said
    assert "never started" in said


def test_a_job_pending_past_the_start_timeout_is_cancelled(serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm, "--slurm-option=--hold",
                         "--worker-start-timeout", "3")
    error = start_failure(broker.endpoint, "emt")
    said = str(error)
    assert "was still PENDING (JobHeldUser) after 3 s" in said and "cancelled" in said
    job = said.split("SLURM job ")[1].split()[0]
    serve_system.wait_until(lambda: not slurm.active_jobs(), f"job {job} to be cancelled")


def test_a_job_whose_model_fails_brings_its_output(serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm, "--models", str(MODELS_FILE))
    said = str(start_failure(broker.endpoint, "broken"))
    assert "ended FAILED" in said and "before it registered" in said
    assert "RuntimeError: weights not found: /nonexistent/model.pt" in said
    assert str(broker.cluster_dir / "logs" / "broken-") in said


def test_a_job_sbatch_refuses_reaches_the_client(serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm, "--slurm-partition", "nosuch")
    said = str(start_failure(broker.endpoint, "emt"))
    assert "sbatch failed:" in said and "invalid partition" in said.lower()
    assert slurm.active_jobs() == []


# ------------------------------------------------------------ workers without their broker


def test_a_worker_leaves_when_its_connection_file_goes(serve_system, slurm):
    """`mlipx serve NAME --connect FILE` needs nothing else; here as a plain process, so
    that only the file can tell it its broker stopped (no scancel reaches it)."""
    broker = SlurmBroker(serve_system, slurm)
    worker = serve_system.spawn("worker", [*MLIPX, "serve", "emt", "--connect",
                                           str(broker.connection_file), "--heartbeat", "0.3"])
    serve_system.wait_workers(broker.endpoint, "emt", 1)
    with RemoteCalculator("emt", broker.endpoint, timeout=60) as calc:
        assert_same_as_local(calc)
    assert broker.stop() == 0
    assert worker.wait(30) == 0, worker.log()
    assert "is gone or names another broker" in worker.log()


def test_a_job_leaves_when_its_broker_is_killed(serve_system, slurm):
    broker = SlurmBroker(serve_system, slurm, "--orphan-timeout", "3")
    with RemoteCalculator("emt", broker.endpoint, timeout=60) as calc:
        assert_same_as_local(calc)
    [job] = [line.split("|")[0] for line in our_active_jobs(slurm, broker)]
    connection_file = broker.connection_file
    broker.proc.signal(signal.SIGKILL)
    serve_system.wait_until(lambda: not slurm.active_jobs(), f"job {job} to end by itself",
                            timeout=40)  # not after its 300 s idle timeout
    output = (broker.cluster_dir / "logs" / f"emt-{job}.out").read_text()
    assert "has not answered for" in output
    connection_file.unlink()  # a killed broker leaves its file behind


# ------------------------------------------------------------ the command line


def test_the_slurm_options_are_checked_before_anything_starts(serve_system, slurm):
    endpoint = serve_system.ipc("unused.ipc")
    cases = [(["--launcher", "slurm"], "needs --autostart"),
             (["--autostart", "--launcher", "slurm", "--gpus", "0,1"], "--slurm-gpus-per-worker"),
             (["--autostart", "--slurm-partition", "gpu"], "need --launcher slurm"),
             (["--autostart", "--launcher", "slurm", "--workers-bind", "ipc:///x"],
              "must be tcp://HOST:PORT")]
    for options, said in cases:
        run = serve_system.run(*MLIPX, "serve-broker", "--path", endpoint, *options,
                               **slurm.env)
        assert run.returncode == 1 and said in " ".join(run.stderr.split()), (options, run)
    plain = serve_system.broker("--autostart")
    run = serve_system.run(*MLIPX, "serve-submit", "emt", "--broker", plain)
    assert run.returncode == 1 and "does not start SLURM jobs" in " ".join(run.stderr.split())
    gone = serve_system.run(*MLIPX, "serve", "emt", "--connect", "/nonexistent.json")
    assert gone.returncode == 1
    assert "does not exist: its broker has stopped" in " ".join(gone.stderr.split())
    assert not os.path.exists("/nonexistent.json")
