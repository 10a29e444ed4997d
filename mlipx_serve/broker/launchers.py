"""How an autostarting broker starts a worker: a local process, or a SLURM job.

Both give the Autostarter ``Launch`` objects it can look at from the broker's loop at
any time without blocking: ``ended()`` says why a worker ended (None while it is on its
way or runs), ``progress()`` what it is doing. A local launch asks its process
(``Popen.poll`` returns at once); a SLURM job's state comes from squeue, which the
launcher calls in a thread of its own every few seconds while it has jobs, handing the
answer to the loop through ``broker.call_soon``. sbatch and scancel run in that thread
too, one call after another.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mdp.broker import Broker
from mlipx_serve import environment
from mlipx_serve.broker import slurm
from mlipx_serve.broker.slurm import SlurmError, SlurmOptions

log = logging.getLogger(__name__)

SLURM_POLL = 5.0  # seconds between squeue calls while the broker has jobs


class Launch(Protocol):
    model: str
    started_at: float
    log_path: Path | None  # the worker's output, once there is a place for it

    def ended(self) -> str | None:
        """Why it ended ("the worker exited with code 1"); None while on its way or up."""

    def progress(self) -> str:
        """What it is doing now, for clients that wait for it."""

    def timed_out(self, seconds: float) -> str:
        """Why it is given up after ``seconds`` without registering."""


class Launcher(Protocol):
    def launch(self, model: str, worker_options: list[str]) -> Launch:
        """Start a worker for ``model`` (``mlipx serve MODEL`` + its options); at once."""

    def stop(self, launch: Launch) -> None:
        """End it without waiting for it."""

    def busy(self) -> bool:
        """Does it still have workers or jobs to look after?"""

    def status(self) -> dict:
        """Its part of ``mmi.mlipx``."""

    def stop_all(self, grace: float) -> None:
        """End everything it started; called once the broker's loop has ended."""


def serve_command(model: str) -> list[str]:
    return [sys.executable, "-m", "mlipx_serve.cli", "serve", model]


def worker_env() -> dict[str, str]:
    """The broker's environment, without the CURVE keys or connection file meant for its
    clients: a started worker uses exactly what its command line gives."""
    return {key: value for key, value in os.environ.items()
            if key not in (*environment.CURVE, environment.CONNECT)}


# ------------------------------------------------------------ local processes


@dataclass
class LocalLaunch:
    model: str
    process: subprocess.Popen
    started_at: float
    log_path: Path
    gpu: str | None = None  # its CUDA_VISIBLE_DEVICES

    def ended(self) -> str | None:
        code = self.process.poll()
        return None if code is None else f"the worker exited with code {code}"

    def progress(self) -> str:
        return "installing and loading the model"

    def timed_out(self, seconds: float) -> str:
        return f"the worker did not register within {seconds:g} s"


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_share(workers: int, cores: int | None = None) -> int | None:
    """CPU threads each of ``workers`` worker processes on one machine may use: its cores
    shared out, or None for a single worker, which may have them all. Without a share each
    process's thread pools (torch's, BLAS's) take every core: two CHGNet workers on two
    cores evaluated 1-2 structures/s that way, and 5.8-7.9 with one thread each."""
    if workers <= 1:
        return None
    return max(1, (cores or os.cpu_count() or 1) // workers)


@dataclass
class LocalLauncher:
    """``mlipx serve`` processes on this machine, spread over ``gpus`` if given, each with
    ``threads`` CPU threads (``thread_share``) unless the broker's environment says."""

    endpoint: str
    log_dir: Path
    curve_key: Path | None = None  # the broker's NAME.key_secret, when it uses CURVE
    gpus: list[str] = field(default_factory=list)
    threads: int | None = None
    started: list[LocalLaunch] = field(default_factory=list)  # not yet seen to end

    def launch(self, model: str, worker_options: list[str]) -> LocalLaunch:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        gpu = self._least_used_gpu(model)
        env = worker_env()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        for variable in THREAD_VARIABLES if self.threads else ():
            env.setdefault(variable, str(self.threads))
        with open(log_path, "ab") as output:
            process = subprocess.Popen(self._command(model, worker_options),
                                       stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        on = "" if gpu is None else f" on GPU {gpu}"
        log.info("starting a worker for '%s'%s (pid %d, output in %s)", model, on, process.pid,
                 log_path)
        launch = LocalLaunch(model, process, time.monotonic(), log_path, gpu)
        self.started.append(launch)
        return launch

    def _command(self, model: str, worker_options: list[str]) -> list[str]:
        command = [*serve_command(model), "--broker", self.endpoint,
                   "--exit-with", str(os.getpid()), *worker_options]
        if self.curve_key is not None:  # the secret file holds the public key too
            key = str(Path(self.curve_key).absolute())
            command += ["--curve-server-key", key, "--curve-secret-key", key]
        return command

    def _least_used_gpu(self, model: str) -> str | None:
        """The GPU with the fewest workers of this model, then the fewest of any."""
        if not self.gpus:
            return None
        alive = [s for s in self.started if s.process.poll() is None]
        return min(self.gpus, key=lambda gpu: (
            sum(s.gpu == gpu and s.model == model for s in alive),
            sum(s.gpu == gpu for s in alive)))

    def stop(self, launch: Launch) -> None:
        launch.process.kill()

    def busy(self) -> bool:
        self.started = [s for s in self.started if s.process.poll() is None]
        return bool(self.started)

    def status(self) -> dict:
        return {"launcher": "local",
                "started_pids": [s.process.pid for s in self.started
                                 if s.process.poll() is None]}

    def stop_all(self, grace: float) -> None:
        end_processes([s.process for s in self.started], grace)


def end_processes(processes: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM (a worker then finishes the request in hand), then SIGKILL what is still
    running after ``grace`` seconds; every process is reaped."""
    alive = [proc for proc in processes if proc.poll() is None]
    for proc in alive:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------ SLURM jobs


@dataclass
class SlurmJob:
    model: str
    started_at: float
    by: str = "autostart"  # or "serve-submit": a job the broker found by its name
    id: str | None = None  # None until sbatch answers
    state: str = "SUBMITTING"
    reason: str = ""
    node: str = ""
    log_path: Path | None = None
    error: str = ""  # why sbatch failed (a SlurmError's text)
    cancelled: bool = False  # by the broker

    def ended(self) -> str | None:
        if self.error:  # sbatch's error, which names it
            return self.error
        if self.state == "GONE":
            return f"SLURM job {self.id} is gone from squeue (ended, then purged)"
        if self.state in slurm.ENDED:
            return f"SLURM job {self.id} ended {self.state}{self._reason()}"
        return None

    def progress(self) -> str:
        if self.id is None:
            return "submitting its SLURM job"
        where = f" on {self.node}" if self.node and self.state == "RUNNING" else ""
        return f"SLURM job {self.id} is {self.state}{self._reason()}{where}"

    def timed_out(self, seconds: float) -> str:
        if self.state == "PENDING":
            return (f"SLURM job {self.id} was still PENDING{self._reason()} after {seconds:g} s "
                    f"(--worker-start-timeout); it was cancelled")
        return (f"the worker of SLURM job {self.id} ({self.state}) did not register within "
                f"{seconds:g} s; it was cancelled")

    def describe(self, now: float) -> dict:
        return {"job": self.id, "model": self.model, "state": self.state,
                "reason": self.reason, "node": self.node, "by": self.by,
                "age": now - self.started_at}

    def _reason(self) -> str:
        return f" ({self.reason})" if self.reason and self.reason != "None" else ""


class SlurmLauncher:
    """Workers as SLURM jobs: ``mlipx serve MODEL --connect FILE`` on the cluster's nodes.

    Jobs are named for the broker (``slurm.job_name``), so that squeue shows those that
    ``mlipx serve-submit`` added as well; ``poll_soon`` looks for them at once.
    """

    def __init__(self, broker: Broker, broker_id: str, connection_file: Path, log_dir: Path,
                 options: SlurmOptions, orphan_timeout: float,
                 poll_interval: float = SLURM_POLL,
                 command_timeout: float = slurm.COMMAND_TIMEOUT):
        self.broker = broker
        self.broker_id = broker_id
        self.connection_file = connection_file
        self.log_dir = log_dir
        self.options = options
        self.orphan_timeout = orphan_timeout
        self.poll_interval = poll_interval
        self.command_timeout = command_timeout
        self.jobs: dict[str, SlurmJob] = {}  # by id, once sbatch gave one
        self.submitting: list[SlurmJob] = []
        self._calls = ThreadPoolExecutor(1, thread_name_prefix="slurm")  # one at a time
        self._polling = False
        self._last_error = ""

    # ------------------------------------------------------------ Launcher

    def launch(self, model: str, worker_options: list[str]) -> SlurmJob:
        job = SlurmJob(model, time.monotonic())
        self.submitting.append(job)
        command = self.worker_command(model, worker_options)
        name = slurm.job_name(self.broker_id, model)
        self._in_thread(lambda: slurm.submit(self.options, name, self.log_dir, model, command,
                                             worker_env(), self.command_timeout),
                        lambda job_id, error: self._submitted(job, job_id, error))
        return job

    def worker_command(self, model: str, worker_options: list[str]) -> list[str]:
        return [*serve_command(model), "--connect", str(self.connection_file),
                "--orphan-timeout", str(self.orphan_timeout), *worker_options]

    def stop(self, launch: Launch) -> None:
        launch.cancelled = True
        if launch.id is not None:
            self._in_thread(lambda: slurm.cancel([launch.id], self.command_timeout),
                            self._report_error)
        # (a job still being submitted is cancelled once sbatch has given its id)

    def busy(self) -> bool:
        return bool(self.submitting or self._active())

    def status(self) -> dict:
        now = time.monotonic()
        return {"launcher": "slurm", "broker_id": self.broker_id,
                "connection_file": str(self.connection_file), "log_dir": str(self.log_dir),
                "slurm": self.options.as_dict(), "orphan_timeout": self.orphan_timeout,
                "jobs": [job.describe(now) for job in self.submitting + self._active()]}

    def stop_all(self, grace: float) -> None:
        """Cancel every job of this broker: those it knows and any squeue shows by name
        (a serve-submit job, or one whose sbatch answer came after the loop ended)."""
        self._calls.shutdown(wait=True)
        ids = {job.id for job in self._active()}
        try:
            rows = slurm.query(self.command_timeout)
            ids |= {row.id for row in rows if not row.ended
                    and slurm.model_of(row.name, self.broker_id) is not None}
            slurm.cancel(sorted(ids), self.command_timeout)
        except SlurmError as error:
            log.error("could not cancel the SLURM jobs %s: %s; cancel them with scancel",
                      ", ".join(sorted(ids)) or "of this broker", error)
            return
        if ids:
            log.info("cancelled SLURM jobs %s", ", ".join(sorted(ids)))

    # ------------------------------------------------------------ polling

    def poll_soon(self) -> None:
        """Look at squeue now (``mlipx serve-submit`` asks for it after submitting)."""
        self._polling = True
        self._in_thread(lambda: slurm.query(self.command_timeout), self._polled)

    def _schedule_poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.broker.call_later(self.poll_interval, lambda: self._in_thread(
                lambda: slurm.query(self.command_timeout), self._polled))

    def _polled(self, rows: list[slurm.JobRow] | None, error: str) -> None:
        self._polling = False
        if rows is not None:
            self._update(rows)
        else:
            self._report_error(None, error)
        if self.busy():
            self._schedule_poll()

    def _update(self, rows: list[slurm.JobRow]) -> None:
        listed = set()
        for row in rows:
            model = slurm.model_of(row.name, self.broker_id)
            if model is None:
                continue
            listed.add(row.id)
            job = self.jobs.get(row.id)
            if job is None and row.ended:
                continue  # not ours to look after, or ended before the broker looked
            if job is None:
                job = self.jobs[row.id] = SlurmJob(
                    model, time.monotonic(), "serve-submit", row.id,
                    log_path=slurm.output_path(self.log_dir, model, row.id))
            job.state, job.reason, job.node = row.state, row.reason, row.node
        for job_id, job in list(self.jobs.items()):
            if job_id not in listed:
                if job.ended() is None:
                    job.state = "GONE"
                del self.jobs[job_id]

    def _submitted(self, job: SlurmJob, job_id: str | None, error: str) -> None:
        self.submitting.remove(job)
        if job_id is None:
            job.error = error
            return
        job.id, job.state = job_id, "PENDING"
        job.log_path = slurm.output_path(self.log_dir, job.model, job_id)
        self.jobs[job_id] = job
        log.info("submitted SLURM job %s for '%s' (output in %s)", job_id, job.model,
                 job.log_path)
        if job.cancelled:
            self.stop(job)
        self._schedule_poll()

    def _active(self) -> list[SlurmJob]:
        return [job for job in self.jobs.values() if job.ended() is None]

    def _report_error(self, _result: object, error: str) -> None:
        if error and error != self._last_error:  # squeue failing every 2 s: say it once
            log.error("%s", error)
        self._last_error = error

    def _in_thread(self, call: Callable[[], object],
                   then: Callable[[object, str], None]) -> None:
        """Run ``call`` in the SLURM thread; ``then(result, "")`` or ``then(None, why)``
        runs in the broker's loop."""
        def done(future: Future) -> None:
            try:
                result, error = future.result(), ""
            except SlurmError as failure:
                result, error = None, str(failure)
            self.broker.call_soon(lambda: then(result, error))

        try:
            self._calls.submit(call).add_done_callback(done)
        except RuntimeError:  # shut down: the broker is stopping, stop_all cancels
            pass


def options_from(status: Mapping) -> SlurmOptions:
    """The SlurmOptions a broker reports in ``mmi.mlipx`` (for serve-submit)."""
    data = status.get("slurm") or {}
    return SlurmOptions(data.get("partition"), int(data.get("gpus") or 0), data.get("time"),
                        data.get("account"), tuple(data.get("extra") or ()))
