"""``mlipx serve-submit``: workers submitted by hand to a running SLURM broker.

The broker says in ``mmi.mlipx`` how it launches (its connection file, its sbatch
options, its workers' settings); the jobs submitted here are named like its own, so the
broker finds them with squeue (asked at once through ``mmi.mlipx.poll``), shows them in
``serve-status``, and cancels them when it stops.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mdp.client import Client
from mdp.errors import MDPError
from mlipx_serve.broker import slurm
from mlipx_serve.broker.launchers import options_from, serve_command, worker_env
from mlipx_serve.broker.slurm import SlurmOptions
from mlipx_serve.errors import MlipxServeError

POLL_SERVICE = "mmi.mlipx.poll"


def slurm_settings(status: dict) -> dict:
    """The broker's launch settings, or a clear error when it has none."""
    if not status["running"]:
        raise MlipxServeError(f"no model broker answers at {status['broker']}; start one "
                              f"with `mlipx serve-broker --autostart --launcher slurm`")
    settings = status["autostart"]
    if settings.get("launcher") != "slurm":
        raise MlipxServeError(f"the broker at {status['broker']} does not start SLURM jobs; "
                              f"restart it with `mlipx serve-broker --autostart --launcher "
                              f"slurm` (or start a worker here with `mlipx serve NAME`)")
    return settings


def merged_options(settings: dict, partition: str | None, gpus: int | None,
                   time: str | None, account: str | None, extra: list[str]) -> SlurmOptions:
    """The broker's sbatch options, with those given here in their place."""
    options = options_from(settings)
    given = {"partition": partition, "gpus": gpus, "time": time, "account": account}
    options = replace(options, **{key: value for key, value in given.items() if value is not None})
    return replace(options, extra=options.extra + tuple(extra)) if extra else options


def worker_command(settings: dict, model: str, models_files: list[str],
                   worker_timeout: float | None) -> list[str]:
    timeout = settings["worker_timeout"] if worker_timeout is None else worker_timeout
    command = [*serve_command(model), "--connect", settings["connection_file"],
               "--orphan-timeout", str(settings["orphan_timeout"]),
               "--timeout", str(timeout), "--heartbeat", str(settings["heartbeat"])]
    if settings.get("batch_size", 1) > 1:
        command += ["--batch-size", str(settings["batch_size"]),
                    "--batch-wait", str(settings["batch_wait"])]
    if settings.get("prefetch"):
        command += ["--prefetch", str(settings["prefetch"])]
    for path in [*settings.get("models_files", []), *models_files]:
        command += ["--models", str(path)]
    return command


def submit_workers(settings: dict, model: str, count: int, options: SlurmOptions,
                   command: list[str], timeout: float = slurm.COMMAND_TIMEOUT) -> list[str]:
    """Submit ``count`` worker jobs; their ids (those submitted before a failure are
    named in its message, so that they can be cancelled)."""
    name = slurm.job_name(settings["broker_id"], model)
    ids: list[str] = []
    for _ in range(count):
        try:
            ids.append(slurm.submit(options, name, Path(settings["log_dir"]), model, command,
                                    worker_env(), timeout))
        except slurm.SlurmError as error:
            done = f" (submitted before: {', '.join(ids)})" if ids else ""
            raise slurm.SlurmError(f"{error}{done}") from None
    return ids


def tell_broker(broker: str, curve: dict, timeout: float = 5.0) -> bool:
    """Ask the broker to look at squeue now; False if it did not answer."""
    try:
        with Client(broker, timeout=timeout, retries=0, **curve) as client:
            client.request(POLL_SERVICE)
        return True
    except MDPError:
        return False
