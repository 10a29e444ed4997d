"""``mlipx serve-submit NAME``: worker jobs added by hand to a SLURM broker
(``broker/submit.py``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mlipx_serve.cli import options
from mlipx_serve.cli.console import fail, say
from mlipx_serve.errors import MlipxServeError


def serve_submit(
    name: str = typer.Argument(..., help="Model name, e.g. mace-mpa-0."),
    count: int = typer.Option(1, "--count", "-n", min=1, help="How many worker jobs."),
    broker: str = options.BROKER,
    models: list[Path] = typer.Option([], "--models", help="A models.py file defining "
                                      "ALL_MODELS, on the shared filesystem; repeat for more "
                                      "(besides the broker's own)."),
    worker_timeout: float | None = typer.Option(None, "--worker-timeout", help="Idle "
                                                "seconds after which a worker leaves "
                                                "(default: the model's as the broker has it)."),
    batch_size: int | None = options.BATCH_SIZE,
    batch_wait: float | None = options.BATCH_WAIT,
    prefetch: int | None = options.PREFETCH,
    slurm_partition: str | None = options.SLURM_PARTITION,
    slurm_gpus_per_worker: int | None = options.SLURM_GPUS,
    slurm_time: str | None = options.SLURM_TIME,
    slurm_account: str | None = options.SLURM_ACCOUNT,
    slurm_option: list[str] = options.SLURM_OPTION,
    slurm_command_timeout: float = options.SLURM_COMMAND_TIMEOUT,
) -> None:
    """Submit worker jobs to a running `serve-broker --launcher slurm`, with its sbatch
    options unless given here (--slurm-option adds to its own)."""
    from mlipx_serve.broker import submit
    from mlipx_serve.client.broker_status import get_broker_status
    from mlipx_serve.client.keys import curve_options
    from mlipx_serve.wire.serving import ServingSettings

    status = get_broker_status(broker)
    try:
        settings = submit.slurm_settings(status)
        if name not in settings.models and not models:
            fail(f"the broker at {status['broker']} knows no model '{name}' (it knows "
                 f"{', '.join(sorted(settings.models))}); add one with --models FILE")
        sbatch = submit.merged_options(settings, slurm_partition, slurm_gpus_per_worker,
                                       slurm_time, slurm_account, slurm_option)
        given = ServingSettings(batch_size=batch_size, batch_wait=batch_wait,
                                prefetch=prefetch, worker_timeout=worker_timeout)
        worker = submit.worker_options(settings, name, [str(p.absolute()) for p in models],
                                       given)
        ids = submit.submit_workers(settings, count, sbatch, worker, slurm_command_timeout)
    except MlipxServeError as error:
        fail(str(error))
    told = submit.tell_broker(status["broker"], curve_options())  # as the status came
    say(f"submitted {len(ids)} worker job(s) for '{name}': {', '.join(ids)}" +
        ("" if told else "; the broker did not answer, so it shows them once it looks at "
                         "squeue again"))
    print(" ".join(ids))
