"""SLURM's own commands, as the model server uses them: sbatch, squeue, scancel.

The pure part builds their command lines and reads their output; the three calls at the
end run them and block, so the broker runs them in a thread (``slurm_launcher.py``), the
command line directly. Plain commands rather than submitit: a worker is a shell command,
not a Python function with a result to collect, and its state must come from squeue,
which every cluster has (submitit asks sacct, which needs accounting).

Every job of a broker is named ``mlipx-serve.<broker id>.<model>``, so that its jobs,
those ``mlipx serve-submit`` added included, can be found with one squeue call.
"""

from __future__ import annotations

import getpass
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlipx_serve.errors import MlipxServeError

NAME_PREFIX = "mlipx-serve"
COMMAND_TIMEOUT = 30.0  # seconds an sbatch, squeue or scancel call may take
# States after which a job runs no more (squeue's long names); the others are on the way.
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                   "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})
SQUEUE_FIELDS = ("%i", "%j", "%T", "%r", "%N")  # id, name, state, reason, node
SEPARATOR = "|"


class SlurmError(MlipxServeError):
    """A SLURM command failed or is missing; the message says which and why."""


@dataclass(frozen=True)
class SlurmOptions:
    """What every worker job asks SLURM for; ``extra`` are further sbatch options as is."""

    partition: str | None = None
    gpus: int = 0  # per worker: --gres=gpu:N, which every SLURM version takes
    time: str | None = None  # sbatch's --time, e.g. 2:00:00
    account: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def sbatch_args(self) -> list[str]:
        args = ["--ntasks=1"]
        if self.partition:
            args.append(f"--partition={self.partition}")
        if self.gpus:
            args.append(f"--gres=gpu:{self.gpus}")
        if self.time:
            args.append(f"--time={self.time}")
        if self.account:
            args.append(f"--account={self.account}")
        return args + list(self.extra)

    def as_dict(self) -> dict:
        return {"partition": self.partition, "gpus": self.gpus, "time": self.time,
                "account": self.account, "extra": list(self.extra)}

    @classmethod
    def from_dict(cls, data: Mapping | None) -> SlurmOptions:
        data = data or {}
        return cls(data.get("partition"), int(data.get("gpus") or 0), data.get("time"),
                   data.get("account"), tuple(data.get("extra") or ()))


@dataclass(frozen=True)
class JobRow:
    """One line of squeue."""

    id: str
    name: str
    state: str
    reason: str
    node: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def job_name(broker_id: str, model: str) -> str:
    return f"{NAME_PREFIX}.{broker_id}.{model}"


def model_of(name: str, broker_id: str) -> str | None:
    """The model a job of this broker serves, from its name; None for any other job."""
    prefix = f"{NAME_PREFIX}.{broker_id}."
    return (name[len(prefix):] or None) if name.startswith(prefix) else None


def output_path(log_dir: Path, model: str, job_id: str) -> Path:
    return log_dir / f"{model}-{job_id}.out"


def sbatch_command(options: SlurmOptions, name: str, log_dir: Path, model: str) -> list[str]:
    """sbatch, reading the script from its standard input (``batch_script``)."""
    output = output_path(log_dir, model, "%j")
    return ["sbatch", "--parsable", f"--job-name={name}", f"--output={output}",
            *options.sbatch_args()]


def batch_script(command: Sequence[str]) -> str:
    """The job: the worker's command line, in place of the shell, so it gets scancel's
    SIGTERM itself."""
    return f"#!/bin/sh\nexec {shlex.join(command)}\n"


def parse_job_id(stdout: str) -> str:
    """``sbatch --parsable`` prints ``ID`` or ``ID;CLUSTER``."""
    job_id = stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {stdout.strip()!r}")
    return job_id


def squeue_command(user: str) -> list[str]:
    """All of ``user``'s jobs that slurmctld still knows, finished ones included (for
    MinJobAge, 300 s by default), so that a job's end is seen with its state."""
    return ["squeue", "--noheader", f"--user={user}", "--states=all",
            f"--format={SEPARATOR.join(SQUEUE_FIELDS)}"]


def parse_squeue(stdout: str) -> list[JobRow]:
    rows = []
    for line in stdout.splitlines():
        parts = line.strip().split(SEPARATOR)
        if len(parts) == len(SQUEUE_FIELDS) and parts[0]:
            job_id, name, state, reason, node = parts
            # (an array or het job's id reads 12_3 or 12+0; its state is what counts here)
            rows.append(JobRow(job_id, name, state.split()[0] if state else "", reason, node))
    return rows


# ------------------------------------------------------------ the commands (blocking)


def submit(options: SlurmOptions, name: str, log_dir: Path, model: str,
           command: Sequence[str], env: Mapping[str, str],
           timeout: float = COMMAND_TIMEOUT) -> str:
    """Submit one worker job; its id."""
    log_dir.mkdir(parents=True, exist_ok=True)
    done = _run(sbatch_command(options, name, log_dir, model), timeout, env,
                batch_script(command))
    return parse_job_id(done.stdout)


def query(timeout: float = COMMAND_TIMEOUT) -> list[JobRow]:
    return parse_squeue(_run(squeue_command(getpass.getuser()), timeout).stdout)


def cancel(job_ids: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> None:
    if job_ids:
        _run(["scancel", *job_ids], timeout)


def _run(args: list[str], timeout: float, env: Mapping[str, str] | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True,
                              timeout=timeout, env=None if env is None else dict(env),
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} is not on PATH: the SLURM launcher runs where SLURM's "
                         f"commands work (a login node of the cluster)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer within {timeout:g} s (slurmctld busy "
                         f"or down?); --slurm-command-timeout gives it longer") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise SlurmError(f"{args[0]} failed: {said}")
    return done
