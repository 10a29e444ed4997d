"""The options several commands share, with the defaults of the settings they stand for
(``WorkerOptions``, ``BrokerSettings``), so that each default is written once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from mlipx_serve import environment
from mlipx_serve.cli.console import fail
from mlipx_serve.errors import EndpointError
from mlipx_serve.wire import endpoints
from mlipx_serve.wire.serving import DEFAULTS as SERVING
from mlipx_serve.wire.worker_options import DEFAULTS


def checked_endpoint(bind: bool) -> Callable:
    """An option callback: the endpoint the option, or the variable behind it, gives
    (``endpoints.endpoint``); one that cannot be used ends the command with one line and
    exit code 2, as a bad option does."""

    def check(context: typer.Context, parameter: typer.CallbackParam,
              value: str | None) -> str | None:
        if not value:
            return None
        source = getattr(context.get_parameter_source(parameter.name), "name", "")
        named = environment.BROKER if source == "ENVIRONMENT" else parameter.opts[0]
        try:
            return endpoints.endpoint(value, named, bind=bind)
        except EndpointError as error:
            fail(str(error), code=2)

    return check


MODELS_HELP = f"A models.py file defining ALL_MODELS; repeat for more (default: built-in " \
              f"models and the files in ${environment.MODELS}, separated like PATH)."
CURVE_SERVER_KEY = typer.Option(
    None, "--curve-server-key", exists=True, dir_okay=False, envvar=environment.CURVE_SERVER_KEY,
    help="The broker's public key file (NAME.key): reach it with CURVE.")
CURVE_SECRET_KEY = typer.Option(
    None, "--curve-secret-key", exists=True, dir_okay=False, envvar=environment.CURVE_SECRET_KEY,
    help="This peer's key pair (NAME.key_secret), admitted by the broker (default: an "
         "ephemeral pair, which only a broker without --curve-clients accepts).")
BROKER = typer.Option(None, "--broker", envvar=environment.BROKER, show_default=False,
                      callback=checked_endpoint(bind=False),
                      help="Broker endpoint, its client or its worker path (default: the "
                           "private per-user broker).")
UNSET = "the model's serving settings, else"  # in the help of an option that may be unset
BATCH_SIZE = typer.Option(None, "--batch-size", min=1, show_default=False, help=f"Requests a "
                          f"worker takes at once and evaluates in one model call (models with "
                          f"calculate_batch: CHGNet, TorchSim; others one after another). "
                          f"Default: {UNSET} {SERVING.batch_size}.")
BATCH_WAIT = typer.Option(None, "--batch-wait", min=0.0, show_default=False, help=f"Seconds a "
                          f"batching worker waits for a fuller batch once a request is in. "
                          f"Default: {UNSET} {SERVING.batch_wait}.")
PREFETCH = typer.Option(None, "--prefetch", min=0, show_default=False, help=f"Requests a "
                        f"worker takes ahead, while it computes, so that the next structure "
                        f"is there when one is done: more throughput for fast models with "
                        f"many requests in flight (`map`). The broker gives them to a worker "
                        f"only when none is free. Default: {UNSET} {SERVING.prefetch}.")
HEARTBEAT = typer.Option(DEFAULTS.heartbeat, "--heartbeat", help="Seconds between "
                         "heartbeats.")
ORPHAN_TIMEOUT = typer.Option(
    DEFAULTS.orphan_timeout, "--orphan-timeout", help="With --launcher slurm, or a worker's "
    "--connect: seconds a worker keeps trying to reach a broker that does not answer before "
    "it leaves.")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Log what happens (connections, "
                       "worker starts, failed requests), not only warnings.")
SLURM_PARTITION = typer.Option(None, "--slurm-partition", help="SLURM partition of the "
                               "worker jobs (default: the cluster's).")
SLURM_GPUS = typer.Option(None, "--slurm-gpus-per-worker", min=0, help="GPUs each worker "
                          "job asks for (--gres=gpu:N); SLURM sets CUDA_VISIBLE_DEVICES.")
SLURM_TIME = typer.Option(None, "--slurm-time", help="Time limit of each worker job "
                          "(sbatch --time, e.g. 8:00:00).")
SLURM_ACCOUNT = typer.Option(None, "--slurm-account", help="Account the worker jobs are "
                             "charged to.")
SLURM_OPTION = typer.Option([], "--slurm-option", metavar="SBATCH-OPTION", help="Any other "
                            "sbatch option, as is; repeat for more, e.g. --slurm-option "
                            "--mem=32G --slurm-option --constraint=a100.")
SLURM_COMMAND_TIMEOUT = typer.Option(30.0, "--slurm-command-timeout", help="Seconds an "
                                     "sbatch, squeue or scancel call may take.")


def checked_curve(server_key: Path | None, secret_key: Path | None) -> dict:
    """The CURVE keyword arguments of the options, else of the environment
    (``client.keys.curve_options``), checked now: not after a model has loaded."""
    from mdp.security import CurveError, client_curve
    from mlipx_serve.client.keys import curve_options

    curve = curve_options(server_key, secret_key)
    try:
        client_curve(curve.get("curve_server_key"), curve.get("curve_secret_key"),
                     curve=curve.get("curve"))
    except (CurveError, ValueError) as error:
        fail(str(error))
    return curve
