"""``mlipx serve-broker``: the options, gathered into ``BrokerSettings``; the broker itself
is assembled and run by ``broker/assemble.py``."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from mlipx_serve import environment
from mlipx_serve.cli import options
from mlipx_serve.cli.console import fail, say, setup_logging
from mlipx_serve.errors import SettingsError
from mlipx_serve.wire.serving import DEFAULTS as SERVING


class Launcher(str, enum.Enum):
    local = "local"
    slurm = "slurm"


def serve_broker(
    path: str = typer.Option(None, "--path", envvar=environment.BROKER, show_default=False,
                             callback=options.checked_endpoint(bind=True),
                             help="Client endpoint, e.g. ipc:///tmp/my-broker.ipc (default: "
                             "a private per-user socket). Workers also get "
                             "<path>-workers.ipc."),
    autostart: bool = typer.Option(False, "--autostart", help="Start a worker when a model "
                                   "with none is requested."),
    models: list[Path] = typer.Option([], "--models", help=options.MODELS_HELP),
    worker_timeout: float | None = typer.Option(
        None, show_default=False, help=f"Idle seconds after which a started worker leaves. "
        f"Default: {options.UNSET} {SERVING.worker_timeout:g}."),
    worker_start_timeout: float = typer.Option(60.0, help="Seconds a started worker may "
                                               "take to register before waiting clients get "
                                               "an error."),
    max_workers_per_model: int | None = typer.Option(
        None, min=1, show_default=False, help=f"Workers autostart may run per model (per GPU "
        f"with --gpus) while requests queue. They share the CPU cores out (OMP_NUM_THREADS "
        f"and the like, unless this environment sets them). Default: {options.UNSET} "
        f"{SERVING.max_workers}."),
    gpus: str = typer.Option("", "--gpus", metavar="0,1,...", help="Spread the workers "
                             "autostart starts over these GPUs (CUDA_VISIBLE_DEVICES); a "
                             "model's serving settings may name some of them."),
    batch_size: int | None = options.BATCH_SIZE,
    batch_wait: float | None = options.BATCH_WAIT,
    prefetch: int | None = options.PREFETCH,
    expiry: float = typer.Option(900.0, help="Seconds a request may wait for a worker."),
    heartbeat: float = options.HEARTBEAT,
    curve_secret_key: Path | None = typer.Option(
        None, "--curve-secret-key", exists=True, dir_okay=False,
        help="The broker's key pair (NAME.key_secret): CURVE on its endpoints, e.g. for tcp "
             "across machines. Workers it autostarts use this pair too."),
    curve_clients: Path | None = typer.Option(
        None, "--curve-clients", exists=True, file_okay=False,
        help="Directory of admitted public keys (*.key); without it any key is admitted. "
             "With --autostart the broker's own public key is admitted as well."),
    launcher: Launcher = typer.Option(
        Launcher.local, "--launcher", help="How --autostart starts workers: processes on "
        "this machine, or SLURM jobs (then workers reach the broker over tcp with CURVE, "
        "through a connection file on the shared filesystem)."),
    slurm_partition: str | None = options.SLURM_PARTITION,
    slurm_gpus_per_worker: int | None = options.SLURM_GPUS,
    slurm_time: str | None = options.SLURM_TIME,
    slurm_account: str | None = options.SLURM_ACCOUNT,
    slurm_option: list[str] = options.SLURM_OPTION,
    workers_bind: str | None = typer.Option(
        None, "--workers-bind", metavar="tcp://HOST:PORT",
        callback=options.checked_endpoint(bind=True),
        help="With --launcher slurm: where the workers' side listens, as the nodes reach it "
        "(default: every interface, a free port, announced as this host's name)."),
    cluster_dir: Path | None = typer.Option(
        None, "--cluster-dir", envvar=environment.CLUSTER_DIR, file_okay=False,
        help="With --launcher slurm: the directory, on the filesystem the nodes share, "
             "for the connection file and the jobs' output (default: ~/.mlipx-serve)."),
    orphan_timeout: float = options.ORPHAN_TIMEOUT,
    slurm_poll: float = typer.Option(5.0, "--slurm-poll", help="Seconds between squeue "
                                     "calls while the broker has jobs."),
    slurm_command_timeout: float = options.SLURM_COMMAND_TIMEOUT,
    accept_definitions: bool = typer.Option(
        False, "--accept-definitions", help="With --autostart: start workers from the model "
        "definitions clients send on a plain tcp --path too. Anyone who reaches that port "
        "can then run code of their choice here; without it, definitions are taken only on "
        "an ipc path (private to you) and from CURVE-admitted clients."),
    max_workers: int | None = typer.Option(
        None, "--max-workers", min=0, show_default=False, help="Worker processes the broker "
        "runs at once, over all models: at the limit, an idle worker of the model used least "
        "lately leaves to make room, or requests wait (0: no limit). Default: two a GPU of "
        "--gpus, else one a core; none with --launcher slurm."),
    metrics: str | None = typer.Option(
        None, "--metrics", metavar="[HOST:]PORT", help="Serve Prometheus metrics over HTTP "
        "at HOST:PORT (a port alone: 127.0.0.1, this machine only); off by default. What "
        "each metric says: README, Operating a shared broker."),
    verbose: bool = options.VERBOSE,
) -> None:
    """Run the model broker until Ctrl-C or SIGTERM."""
    from mlipx_serve.broker.assemble import BrokerSettings, ModelBroker
    from mlipx_serve.broker.slurm import SlurmOptions
    from mlipx_serve.wire.serving import ServingSettings

    setup_logging(verbose)
    settings = BrokerSettings(
        path=path, autostart=autostart, models_files=models,
        serving=ServingSettings(batch_size=batch_size, batch_wait=batch_wait,
                                max_workers=max_workers_per_model, prefetch=prefetch,
                                worker_timeout=worker_timeout),
        start_timeout=worker_start_timeout,
        gpus=[gpu.strip() for gpu in gpus.split(",") if gpu.strip()], expiry=expiry,
        heartbeat=heartbeat, curve_secret_key=curve_secret_key, curve_clients=curve_clients,
        accept_definitions=accept_definitions, launcher=launcher.value,
        slurm=SlurmOptions(slurm_partition, slurm_gpus_per_worker or 0, slurm_time,
                           slurm_account, tuple(slurm_option)),
        workers_bind=workers_bind, cluster_dir=cluster_dir, orphan_timeout=orphan_timeout,
        slurm_poll=slurm_poll, slurm_command_timeout=slurm_command_timeout, metrics=metrics,
        max_workers=max_workers)
    try:
        broker = ModelBroker(settings, say)
        why = broker.run()
    except SettingsError as error:
        fail(str(error))
    say(f"model broker at {broker.endpoint} stopped ({why})")
