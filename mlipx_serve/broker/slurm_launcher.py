"""Workers as SLURM jobs: ``mlipx serve MODEL --connect FILE`` on the cluster's nodes.

A SLURM job's state comes from squeue, which the launcher calls in a thread of its own
every few seconds while it has jobs, handing the answer to the broker's loop through
``broker.call_soon``; sbatch and scancel run in that thread too, one call after another.
Nothing SLURM does holds up a request.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdp.broker import Broker
from mlipx_serve.broker import slurm
from mlipx_serve.broker.launch import Launch, worker_env
from mlipx_serve.broker.slurm import SlurmError, SlurmOptions
from mlipx_serve.wire.status import POLL_SERVICE, JobRecord
from mlipx_serve.wire.worker_options import WorkerOptions

log = logging.getLogger(__name__)

SLURM_POLL = 5.0  # seconds between squeue calls while the broker has jobs


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

    def describe(self, now: float) -> JobRecord:
        return JobRecord(self.id, self.model, self.state, self.reason, self.node, self.by,
                         now - self.started_at)

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
        self.sbatch = options
        self.orphan_timeout = orphan_timeout
        self.poll_interval = poll_interval
        self.command_timeout = command_timeout
        self.jobs: dict[str, SlurmJob] = {}  # by id, once sbatch gave one
        self.submitting: list[SlurmJob] = []
        self._calls = ThreadPoolExecutor(1, thread_name_prefix="slurm")  # one at a time
        self._polling = False
        self._last_error = ""
        broker.add_mmi_handler(POLL_SERVICE, self._poll_asked)

    # ------------------------------------------------------------ Launcher

    def launch(self, options: WorkerOptions, gpus: Sequence[str] = (),
               threads: int | None = None) -> SlurmJob:
        """A job for a worker with ``options``; SLURM gives it its GPUs and cores
        (``--slurm-gpus-per-worker``, the partition's), not ``gpus`` or ``threads``."""
        model = options.model
        job = SlurmJob(model, time.monotonic())
        self.submitting.append(job)
        command = self.options(options).command()
        name = slurm.job_name(self.broker_id, model)
        self._in_thread(lambda: slurm.submit(self.sbatch, name, self.log_dir, model, command,
                                             worker_env(), self.command_timeout),
                        lambda job_id, error: self._submitted(job, job_id, error))
        return job

    def options(self, options: WorkerOptions) -> WorkerOptions:
        """Where a job's worker finds this broker: the connection file."""
        return dataclasses.replace(options, connect=str(self.connection_file),
                                   orphan_timeout=self.orphan_timeout)

    def stop(self, launch: Launch) -> None:
        launch.cancelled = True
        if launch.id is not None:
            self._in_thread(lambda: slurm.cancel([launch.id], self.command_timeout),
                            self._report_error)
        # (a job still being submitted is cancelled once sbatch has given its id)

    def busy(self) -> bool:
        return bool(self.submitting or self._active())

    def running(self) -> int:
        return len(self.submitting) + len(self._active())

    def started_it(self, metadata: dict) -> bool:
        return self._job_of(metadata) is not None

    def retire(self, metadata: dict) -> bool:
        """Cancel the job of the idle worker (``scancel``, in the launcher's thread)."""
        job = self._job_of(metadata)
        if job is None:
            return False
        self.stop(job)
        return True

    def _job_of(self, metadata: dict) -> SlurmJob | None:
        job_id = metadata.get("slurm_job")
        return next((job for job in self._active() if job.id is not None and
                     job.id == job_id), None)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"launcher": "slurm", "broker_id": self.broker_id,
                "connection_file": str(self.connection_file), "log_dir": str(self.log_dir),
                "slurm": self.sbatch.as_dict(),
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

    def _poll_asked(self, body: list) -> list[bytes]:
        self.poll_soon()
        return [b"200"]

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
