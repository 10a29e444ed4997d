"""``mlipx serve-submit``: workers submitted by hand to a running SLURM broker.

The broker says in ``mmi.mlipx`` how it launches (its connection file, its sbatch
options, the options of its workers); the jobs submitted here are named like its own, so
the broker finds them with squeue (asked at once through ``mmi.mlipx.poll``), shows them
in ``serve-status``, and cancels them when it stops.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mdp.client import ask
from mdp.errors import MDPError
from mlipx_serve.broker import slurm
from mlipx_serve.broker.launch import worker_env
from mlipx_serve.broker.slurm import SlurmOptions
from mlipx_serve.client.broker_status import serving
from mlipx_serve.errors import MlipxServeError
from mlipx_serve.wire.serving import ServingSettings
from mlipx_serve.wire.status import POLL_SERVICE, ServingStatus
from mlipx_serve.wire.worker_options import WorkerOptions


def slurm_settings(status: dict) -> ServingStatus:
    """The broker's launch settings, or a clear error when it has none."""
    if not status["running"]:
        raise MlipxServeError(f"no model broker answers at {status['broker']}; start one "
                              f"with `mlipx serve-broker --autostart --launcher slurm`")
    settings = serving(status)
    if settings.launcher != "slurm":
        raise MlipxServeError(f"the broker at {status['broker']} does not start SLURM jobs; "
                              f"restart it with `mlipx serve-broker --autostart --launcher "
                              f"slurm` (or start a worker here with `mlipx serve NAME`)")
    return settings


def merged_options(settings: ServingStatus, partition: str | None, gpus: int | None,
                   time: str | None, account: str | None, extra: list[str]) -> SlurmOptions:
    """The broker's sbatch options, with those given here in their place."""
    options = SlurmOptions.from_dict(settings.slurm)
    given = {"partition": partition, "gpus": gpus, "time": time, "account": account}
    options = dataclasses.replace(options, **{key: value for key, value in given.items()
                                              if value is not None})
    return dataclasses.replace(options, extra=options.extra + tuple(extra)) if extra \
        else options


def worker_options(settings: ServingStatus, model: str, models_files: list[str],
                   given: ServingSettings) -> WorkerOptions:
    """What the broker's own jobs are told, for ``model``, with more models files: the
    serving settings ``given`` here, else the model's as the broker has them."""
    options = dataclasses.replace(settings.worker, model=model,
                                  models_files=(*settings.worker.models_files, *models_files))
    offer = settings.models.get(model)
    if offer is None:  # a model of the files given here: its settings are the worker's
        return options.serving_as(given)
    if offer.start_with:  # a model a client defined
        options = dataclasses.replace(options, definition=offer.start_with)
    return options.serving_as(given.over(ServingSettings.of(offer.serving)))


def submit_workers(settings: ServingStatus, count: int, sbatch: SlurmOptions,
                   options: WorkerOptions, timeout: float = slurm.COMMAND_TIMEOUT) -> list[str]:
    """Submit ``count`` worker jobs; their ids (those submitted before a failure are
    named in its message, so that they can be cancelled)."""
    name = slurm.job_name(settings.broker_id, options.model)
    ids: list[str] = []
    for _ in range(count):
        try:
            ids.append(slurm.submit(sbatch, name, Path(settings.log_dir), options.model,
                                    options.command(), worker_env(), timeout))
        except slurm.SlurmError as error:
            done = f" (submitted before: {', '.join(ids)})" if ids else ""
            raise slurm.SlurmError(f"{error}{done}") from None
    return ids


def tell_broker(broker: str, curve: dict, timeout: float = 5.0) -> bool:
    """Ask the broker to look at squeue now; False if it did not answer."""
    try:
        ask(broker, POLL_SERVICE, timeout=timeout, **curve)
        return True
    except MDPError:
        return False
