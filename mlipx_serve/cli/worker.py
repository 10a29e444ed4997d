"""``mlipx serve NAME``: one model worker. The options become ``WorkerOptions``, the model
comes from the models files, a client's definition or a factory file, and the worker
runs (``worker/run.py``) until it leaves."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import typer

from mlipx_serve import environment
from mlipx_serve.cli import options
from mlipx_serve.cli.console import fail, say, setup_logging
from mlipx_serve.errors import MlipxServeError
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.serving import DEFAULTS as SERVING
from mlipx_serve.wire.worker_options import WorkerOptions


def serve(
    name: str = typer.Argument(..., help="Model name, e.g. emt, lj, chgnet, mace-mpa-0."),
    broker: str = options.BROKER,
    models: list[Path] = typer.Option([], "--models", help=options.MODELS_HELP),
    timeout: float | None = typer.Option(
        None, "--timeout", show_default=False, help=f"Leave after this many idle seconds (0: "
        f"never). Default: {options.UNSET} {SERVING.worker_timeout:g}."),
    no_uv: bool = typer.Option(False, "--no-uv", help="Never re-run under `uv run` to get "
                               "the model's extras."),
    heartbeat: float = options.HEARTBEAT,
    batch_size: int | None = options.BATCH_SIZE,
    batch_wait: float | None = options.BATCH_WAIT,
    prefetch: int | None = options.PREFETCH,
    factory: Path | None = typer.Option(
        None, "--factory", exists=True, dir_okay=False,
        help="Serve the calculator a pickled Python function builds (a private file that "
             "mlipx_serve.serve_model writes; read once, then deleted)."),
    definition: str | None = typer.Option(
        None, "--definition", metavar="JSON", help="Serve the model this definition "
        "describes (module, class, kwargs: protocol/model-definition.md), in place of one "
        "from the models files: what an autostarting broker gives the workers of a model "
        "a client defined."),
    exit_with: int | None = typer.Option(
        None, "--exit-with", metavar="PID",
        help="Leave, after the request in hand, when process PID ends (autostarted "
             "workers: their broker)."),
    connect: Path | None = typer.Option(
        None, "--connect", envvar=environment.CONNECT, dir_okay=False, metavar="FILE",
        help="The connection file of a broker that starts workers on SLURM: its endpoint "
             "and keys (in place of --broker and --curve-*). The worker leaves when the "
             "file is gone."),
    orphan_timeout: float = options.ORPHAN_TIMEOUT,
    curve_server_key: Path | None = options.CURVE_SERVER_KEY,
    curve_secret_key: Path | None = options.CURVE_SECRET_KEY,
    verbose: bool = options.VERBOSE,
) -> None:
    """Load one model and serve it until idle for --timeout seconds."""
    worker = worker_options(locals())  # (the parameters, nothing else yet)
    from mlipx_serve.worker import run  # its clock is the worker's start

    setup_logging(verbose)
    endpoint, curve, watch = _where(worker)
    model, defined = _model(worker)
    say(f"loading model '{name}' ...")
    try:
        run.serve(model, worker, endpoint, curve, watch, say, served=defined)
    except MlipxServeError as error:
        fail(str(error))
    except Exception as error:  # the model's own code failed: its traceback tells where
        traceback.print_exc()
        fail(f"model '{name}' failed to load: {type(error).__name__}: {error}")


def worker_options(params: dict) -> WorkerOptions:
    """The command's parameters as ``WorkerOptions``: what the command line built from
    them (``WorkerOptions.command``) spells back."""
    paths = {"connect", "factory", "curve_server_key", "curve_secret_key"}
    values = {key: (None if value is None else str(value)) if key in paths else value
              for key, value in params.items() if key not in ("name", "models")}
    return WorkerOptions(params["name"], models_files=tuple(str(p) for p in params["models"]),
                         **values)


def _where(worker: WorkerOptions) -> tuple[str, dict, object]:
    """(the broker's endpoint, the CURVE keyword arguments, what tells the worker to
    leave when its broker is gone or None): from a connection file, else the options."""
    from mdp.security import ClientCurve
    from mlipx_serve.wire.connection import Connection
    from mlipx_serve.wire.endpoints import default_broker, worker_endpoint
    from mlipx_serve.worker.watch import BrokerWatch

    if worker.connect is None:
        curve = options.checked_curve(worker.curve_server_key, worker.curve_secret_key)
        return worker.broker or worker_endpoint(default_broker()), curve, None
    try:
        connection = Connection.read(Path(worker.connect))
    except MlipxServeError as error:
        fail(str(error))
    watch = BrokerWatch(Path(worker.connect), connection, worker.orphan_timeout)
    return connection.endpoint, {"curve": ClientCurve(*connection.keys())}, watch


def _model(worker: WorkerOptions) -> tuple[object, Definition | None]:
    """The model to serve, and the definition it was given as (``--definition``); re-run
    under uv first if its packages are missing here."""
    from mlipx_serve.worker.uv import reexec_under_uv

    try:
        model, defined = _loaded(worker)
        if not worker.no_uv:
            reexec_under_uv(model, sys.argv[1:])
    except (MlipxServeError, OSError) as error:  # the models, the factory file, uv
        fail(str(error))
    return model, defined


def _loaded(worker: WorkerOptions) -> tuple[object, Definition | None]:
    from mlipx_serve.models.definitions import FactoryModel, model_from
    from mlipx_serve.models.models_file import find_model, load_registry
    from mlipx_serve.wire.factory_file import load_factory

    if worker.factory:
        return FactoryModel(load_factory(worker.factory), worker.model), None
    if worker.definition:
        try:
            defined = Definition.from_json(json.loads(worker.definition))
        except ValueError as error:  # (a DefinitionError, or not JSON)
            fail(f"--definition is not a model definition: {error}")
        return model_from(defined), defined
    return find_model(worker.model, load_registry(list(worker.models_files) or None)), None
