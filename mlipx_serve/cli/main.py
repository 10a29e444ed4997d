"""The ``mlipx`` command: serve-broker, serve, serve-status; anything else goes to mlipx."""

from __future__ import annotations

import enum
import importlib.util
import json
import logging
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mdp.broker import Broker, ipc_path
from mdp.client import Client
from mdp.core import BrokerConfig
from mdp.errors import MDPError
from mdp.security import CurveError, client_curve
from mlipx_serve import environment
from mlipx_serve.errors import EndpointError, MlipxServeError
from mlipx_serve.wire import endpoints as paths

app = typer.Typer(
    help="Serve machine-learned interatomic potentials to ASE over a Majordomo bus.",
    epilog=f"Environment: {environment.BROKER} (the broker's endpoint), "
           f"{environment.USE_SERVE} (true: mlipx's models prefer served ones), "
           f"{environment.TIMEOUT} (seconds a served calculation may wait for its reply; "
           f"600), {environment.MODELS} (models.py files), {environment.CURVE_SERVER_KEY} and "
           f"{environment.CURVE_SECRET_KEY} (CURVE key files), {environment.HOOK} (0: leave "
           f"mlipx as it is).",
    add_completion=False, no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _checked_endpoint(bind: bool) -> Callable:
    """An option callback: the endpoint the option, or the variable behind it, gives
    (``paths.endpoint``); one that cannot be used ends the command with one line and exit
    code 2, as a bad option does."""

    def check(context: typer.Context, parameter: typer.CallbackParam,
              value: str | None) -> str | None:
        if not value:
            return None
        source = getattr(context.get_parameter_source(parameter.name), "name", "")
        named = environment.BROKER if source == "ENVIRONMENT" else parameter.opts[0]
        try:
            return paths.endpoint(value, named, bind=bind)
        except EndpointError as error:
            _fail(str(error), code=2)

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
                      callback=_checked_endpoint(bind=False),
                      help="Broker endpoint, its client or its worker path (default: the "
                           "private per-user broker).")
BATCH_SIZE = typer.Option(1, "--batch-size", min=1, help="Requests a worker takes at once "
                          "and evaluates in one model call (models with calculate_batch: "
                          "CHGNet, TorchSim; others one after another).")
BATCH_WAIT = typer.Option(0.01, "--batch-wait", min=0.0, help="Seconds a batching worker "
                          "waits for a fuller batch once a request is in.")
PREFETCH = typer.Option(0, "--prefetch", min=0, help="Requests a worker takes ahead, while "
                        "it computes, so that the next structure is there when one is done: "
                        "more throughput for fast models with many requests in flight "
                        "(`map`). The broker gives them to a worker only when none is free.")
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
ORPHAN_TIMEOUT = 60.0
T = TypeVar("T")


class Launcher(str, enum.Enum):
    local = "local"
    slurm = "slurm"


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _say(message: str) -> None:
    """One line on stderr, as it is (rich would take ``[mace]`` for markup)."""
    err.print(escape(message), soft_wrap=True)


def _registry(models: list[Path]) -> dict:
    from mlipx_serve.models.models_file import load_registry

    try:
        return load_registry([str(p) for p in models] or None)
    except MlipxServeError as error:
        _fail(str(error))


def _or_fail(make: Callable[[], T]) -> T:
    """Build something from key files; an unusable file or option ends the command."""
    try:
        return make()
    except (CurveError, ValueError) as error:
        _fail(str(error))


def _client_curve(server_key: Path | None, secret_key: Path | None) -> dict:
    """The options, else the environment's key files; checked now, not after a model loads."""
    curve = paths.curve_options(server_key, secret_key)
    _or_fail(lambda: client_curve(curve["curve_server_key"], curve["curve_secret_key"]))
    return curve


def serve_broker(
    path: str = typer.Option(None, "--path", envvar=environment.BROKER, show_default=False,
                             callback=_checked_endpoint(bind=True),
                             help="Client endpoint, e.g. ipc:///tmp/my-broker.ipc (default: "
                             "a private per-user socket). Workers also get "
                             "<path>-workers.ipc."),
    autostart: bool = typer.Option(False, "--autostart", help="Start a worker when a model "
                                   "with none is requested."),
    models: list[Path] = typer.Option([], "--models", help=MODELS_HELP),
    worker_timeout: float = typer.Option(300.0, help="Idle seconds after which a started "
                                         "worker leaves."),
    worker_start_timeout: float = typer.Option(60.0, help="Seconds a started worker may "
                                               "take to register before waiting clients get "
                                               "an error."),
    max_workers_per_model: int = typer.Option(1, help="Workers autostart may run per model "
                                              "(per GPU with --gpus) while requests queue. "
                                              "They share the CPU cores out (OMP_NUM_THREADS "
                                              "and the like, unless this environment sets "
                                              "them)."),
    gpus: str = typer.Option("", "--gpus", metavar="0,1,...", help="Spread the workers "
                             "autostart starts over these GPUs (CUDA_VISIBLE_DEVICES)."),
    batch_size: int = BATCH_SIZE,
    batch_wait: float = BATCH_WAIT,
    prefetch: int = PREFETCH,
    expiry: float = typer.Option(900.0, help="Seconds a request may wait for a worker."),
    heartbeat: float = typer.Option(2.5, help="Seconds between heartbeats."),
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
    slurm_partition: str | None = SLURM_PARTITION,
    slurm_gpus_per_worker: int | None = SLURM_GPUS,
    slurm_time: str | None = SLURM_TIME,
    slurm_account: str | None = SLURM_ACCOUNT,
    slurm_option: list[str] = SLURM_OPTION,
    workers_bind: str | None = typer.Option(
        None, "--workers-bind", metavar="tcp://HOST:PORT", callback=_checked_endpoint(bind=True),
        help="With --launcher slurm: where the workers' side listens, as the nodes reach it "
        "(default: every interface, a free port, announced as this host's name)."),
    cluster_dir: Path | None = typer.Option(
        None, "--cluster-dir", envvar=environment.CLUSTER_DIR, file_okay=False,
        help="With --launcher slurm: the directory, on the filesystem the nodes share, "
             "for the connection file and the jobs' output (default: ~/.mlipx-serve)."),
    orphan_timeout: float = typer.Option(
        ORPHAN_TIMEOUT, "--orphan-timeout", help="With --launcher slurm: seconds a worker "
        "job keeps trying to reach a broker that does not answer before it leaves."),
    slurm_poll: float = typer.Option(5.0, "--slurm-poll", help="Seconds between squeue "
                                     "calls while the broker has jobs."),
    slurm_command_timeout: float = SLURM_COMMAND_TIMEOUT,
    accept_definitions: bool = typer.Option(
        False, "--accept-definitions", help="With --autostart: start workers from the model "
        "definitions clients send on a plain tcp --path too. Anyone who reaches that port "
        "can then run code of their choice here; without it, definitions are taken only on "
        "an ipc path (private to you) and from CURVE-admitted clients."),
    verbose: bool = VERBOSE,
) -> None:
    """Run the model broker until Ctrl-C or SIGTERM."""
    _logging(verbose)
    if models and not autostart:
        _fail("--models names the models the broker may start, so it needs --autostart; "
              "a worker started by hand takes its own: mlipx serve NAME --models FILE")
    on_slurm = launcher is Launcher.slurm
    if on_slurm:
        _check_slurm_options(autostart, gpus, curve_secret_key, curve_clients)
    elif workers_bind or slurm_option or any(o is not None for o in (
            slurm_partition, slurm_gpus_per_worker, slurm_time, slurm_account)):
        _fail("--workers-bind and the --slurm-* options need --launcher slurm")
    endpoint = path or paths.local_broker()
    workers = paths.worker_endpoint(endpoint)
    config = BrokerConfig(heartbeat_interval=heartbeat, request_expiry=expiry or None)
    binds = [endpoint] if workers == endpoint else [endpoint, workers]
    admitted = _admitted(curve_clients, curve_secret_key) if autostart else curve_clients
    cluster = _cluster_side(workers_bind, cluster_dir) if on_slurm else None
    try:
        security = cluster.broker_options() if cluster else \
            {"curve_secret_key": curve_secret_key, "curve_clients": admitted}
        broker = _or_fail(lambda: Broker(binds, config=config, **security))
        if _broker_answers(endpoint, None if cluster else curve_secret_key):
            _fail(f"a broker already runs at {endpoint}; stop it first or pick another --path")
        starter = None
        if autostart:
            from mlipx_serve.broker.autostart import AutostartConfig, Autostarter
            from mlipx_serve.broker.launchers import LocalLauncher, thread_share
            from mlipx_serve.broker.slurm import SlurmOptions

            config = AutostartConfig(
                start_timeout=worker_start_timeout, worker_timeout=worker_timeout,
                max_workers=max_workers_per_model, heartbeat=heartbeat,
                models_files=[str(p.absolute()) for p in models], gpus=len(_gpus(gpus)),
                batch_size=batch_size, batch_wait=batch_wait, prefetch=prefetch)
            if cluster:
                launch = _slurm_launcher(broker, cluster, SlurmOptions(
                    slurm_partition, slurm_gpus_per_worker or 0, slurm_time, slurm_account,
                    tuple(slurm_option)), orphan_timeout, slurm_poll, slurm_command_timeout)
            else:
                launch = LocalLauncher(workers, paths.private_dir() / "logs", curve_secret_key,
                                       _gpus(gpus), thread_share(config.workers_per_model))
            refusal = _definitions_refused(endpoint, curve_secret_key, curve_clients,
                                           accept_definitions)
            starter = Autostarter(broker, _registry(models), config, launch, refusal)
        if cluster is None:  # in the loop, once bound: a broker that cannot bind says only that
            broker.call_soon(lambda: _announce(endpoint, workers, starter, curve_secret_key,
                                               curve_clients))
        else:  # in the loop: the bound port goes into the connection file
            broker.call_soon(lambda: _open_cluster_side(broker, cluster, endpoint, starter))
        _run_broker(broker, starter)
        _say(f"model broker at {endpoint} stopped ({broker.stop_reason or 'asked to stop'})")
    finally:
        if admitted != curve_clients:
            shutil.rmtree(admitted, ignore_errors=True)
        if cluster is not None:
            cluster.close()


def _definitions_refused(endpoint: str, curve_key: Path | None, clients: Path | None,
                         accepted: bool) -> str:
    """Why clients' model definitions are refused here, or "" when they are taken: from
    whoever can reach the endpoint, a definition means code of their choice run here."""
    if accepted or endpoint.startswith("ipc://") or (curve_key and clients):
        return ""
    return (f"the broker at {endpoint} takes model definitions only from trusted clients "
            f"(its ipc path, or CURVE-admitted keys), and this endpoint has neither: anyone "
            f"who reaches it could run code of their choice there. Restart it with "
            f"--curve-secret-key and --curve-clients, or, on a network you trust, with "
            f"--accept-definitions")


def _check_slurm_options(autostart: bool, gpus: str, curve_key: Path | None,
                         curve_clients: Path | None) -> None:
    if not autostart:
        _fail("--launcher says how --autostart starts workers, so it needs --autostart")
    if gpus:
        _fail("--gpus spreads workers over this machine's GPUs; SLURM jobs get theirs "
              "with --slurm-gpus-per-worker N")
    if curve_key or curve_clients:
        _fail("--launcher slurm makes its own CURVE keys for the workers' side and keeps "
              "the clients' side on the private ipc socket; drop --curve-secret-key and "
              "--curve-clients")


def _cluster_side(bind: str | None, directory: Path | None):
    from mlipx_serve.broker.cluster import ClusterSide

    directory = Path(directory).absolute() if directory else None
    try:
        return ClusterSide.create(bind, directory)
    except (OSError, ValueError, CurveError) as error:
        _fail(str(error))


def _slurm_launcher(broker: Broker, cluster, options, orphan_timeout: float, poll: float,
                    command_timeout: float):
    from mlipx_serve.broker.launchers import SlurmLauncher
    from mlipx_serve.broker.submit import POLL_SERVICE

    launcher = SlurmLauncher(broker, cluster.broker_id, cluster.connection_file,
                             cluster.connection_file.parent / "logs", options, orphan_timeout,
                             poll, command_timeout)

    def poll_now(body: list) -> list[bytes]:
        launcher.poll_soon()
        return [b"200"]

    broker.add_mmi_handler(POLL_SERVICE, poll_now)
    return launcher


def _open_cluster_side(broker: Broker, cluster, endpoint: str, starter) -> None:
    """In the loop, once bound: the connection file, then say where everything is."""
    connection = cluster.write_connection(broker.bound_endpoints[-1])
    auto = f"on for {len(starter.registry)} models" if starter else "off"
    _say(f"model broker at {endpoint}; autostart {auto}, as SLURM jobs. Workers reach it at "
         f"{connection.endpoint} (CURVE); a worker started by hand on a node needs only: "
         f"mlipx serve NAME --connect {cluster.connection_file}. Ctrl-C stops it and cancels "
         f"its jobs.")


def _gpus(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if len(set(gpus)) != len(gpus):
        _fail(f"--gpus {text!r} names a GPU twice")
    return gpus


def _admitted(clients: Path | None, secret_key: Path | None) -> Path | None:
    """The clients directory an autostarting broker uses: one that admits its own key."""
    if clients is None or secret_key is None:
        return clients
    from mlipx_serve.broker.autostart import admit_broker_key

    return _or_fail(lambda: admit_broker_key(clients, secret_key, paths.private_dir()))


def _announce(endpoint: str, workers: str, starter, curve_key: Path | None,
              clients: Path | None) -> None:
    auto = f"on for {len(starter.registry)} models" if starter else "off"
    admits = f"the keys in {clients}" if clients else "any key"
    curve = "" if curve_key is None else f"; CURVE, admitting {admits}"
    _say(f"model broker at {endpoint} (workers: {workers}); autostart {auto}{curve}. "
         f"Ctrl-C stops it.")


def _run_broker(broker: Broker, starter) -> None:
    try:
        broker.run()
    except (OSError, CurveError) as error:
        _fail(str(error))
    finally:
        if starter is not None:
            starter.stop_all()


def _broker_answers(endpoint: str, curve_key: Path | None) -> bool:
    """Does a broker answer here already? A CURVE one answers only a CURVE request, which
    this broker's own key pair makes (its secret file holds its public key as well)."""
    ipc = ipc_path(endpoint)
    if ipc is not None and not ipc.exists():
        return False
    tries = [{}] if curve_key is None else \
        [{}, {"curve_server_key": curve_key, "curve_secret_key": curve_key}]
    return any(_answers(endpoint, curve) for curve in tries)


def _answers(endpoint: str, curve: dict) -> bool:
    try:
        with Client(endpoint, timeout=0.5, retries=0, **curve) as client:
            client.request("mmi.service", "mmi.status")
        return True
    except MDPError:
        return False


def serve(
    name: str = typer.Argument(..., help="Model name, e.g. emt, lj, chgnet, mace-mpa-0."),
    broker: str = BROKER,
    models: list[Path] = typer.Option([], "--models", help=MODELS_HELP),
    timeout: float = typer.Option(300.0, "--timeout", help="Leave after this many idle "
                                  "seconds (0: never)."),
    no_uv: bool = typer.Option(False, "--no-uv", help="Never re-run under `uv run` to get "
                               "the model's extras."),
    heartbeat: float = typer.Option(2.5, help="Seconds between heartbeats."),
    batch_size: int = BATCH_SIZE,
    batch_wait: float = BATCH_WAIT,
    prefetch: int = PREFETCH,
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
    orphan_timeout: float = typer.Option(
        ORPHAN_TIMEOUT, "--orphan-timeout", help="With --connect: leave when the broker "
        "has not answered for this many seconds."),
    curve_server_key: Path | None = CURVE_SERVER_KEY,
    curve_secret_key: Path | None = CURVE_SECRET_KEY,
    verbose: bool = VERBOSE,
) -> None:
    """Load one model and serve it until idle for --timeout seconds."""
    from mlipx_serve.worker.run import find_model, reexec_under_uv

    _logging(verbose)
    connection = _or_fail_serving(lambda: _read_connection(connect)) if connect else None
    endpoint = connection.endpoint if connection else broker or \
        paths.worker_endpoint(paths.default_broker())
    curve = {} if connection else _client_curve(curve_server_key, curve_secret_key)
    try:
        model = _factory_model(name, factory) if factory else \
            _defined_model(definition) if definition else find_model(name, _registry(models))
        if not no_uv:
            reexec_under_uv(model, sys.argv[1:])
    except (MlipxServeError, OSError) as error:  # the models, the factory file, uv
        _fail(str(error))
    _say(f"loading model '{name}' ...")
    options = {"idle_timeout": timeout or None, "heartbeat": heartbeat, "exit_with": exit_with,
               "batch_size": batch_size, "batch_wait": batch_wait, "prefetch": prefetch}
    try:
        if connection is None:
            _run_worker(name, model, endpoint, curve=curve, **options)
        else:
            from mlipx_serve.wire.connection import BrokerWatch

            with connection.key_files() as keys:
                watch = BrokerWatch(connect, connection, keys, orphan_timeout)
                _run_worker(name, model, endpoint, curve=keys, leave_when=watch, **options)
    except MlipxServeError as error:
        _fail(str(error))
    except Exception as error:  # the model's own code failed: its traceback tells where
        traceback.print_exc()
        _fail(f"model '{name}' failed to load: {type(error).__name__}: {error}")


def _run_worker(name: str, model, endpoint: str, idle_timeout: float | None, **options) -> None:
    from mlipx_serve.worker.run import serve as run_worker

    run_worker(name, model, endpoint, idle_timeout, say=_say, **options)


def _read_connection(path: Path):
    from mlipx_serve.wire.connection import Connection

    return Connection.read(path)


def _or_fail_serving(make: Callable[[], T]) -> T:
    try:
        return make()
    except MlipxServeError as error:
        _fail(str(error))


def serve_status(
    broker: str = BROKER,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh the tables in place "
                               "until Ctrl-C."),
    interval: float = typer.Option(1.5, "--interval", min=0.1, help="Seconds between "
                                   "refreshes with --watch."),
    curve_server_key: Path | None = CURVE_SERVER_KEY,
    curve_secret_key: Path | None = CURVE_SECRET_KEY,
) -> None:
    """Show the broker, its models, workers, SLURM jobs and queues (exit 1 if no broker
    answers)."""
    from mlipx_serve.cli.status_view import render
    from mlipx_serve.client.broker_status import get_broker_status

    curve = _client_curve(curve_server_key, curve_secret_key)
    status = get_broker_status(broker, **curve)
    if watch:
        _watch(lambda: render(get_broker_status(broker, **curve)), render(status), interval)
        return
    if as_json:
        print(json.dumps(status, indent=2))
    else:
        console.print(render(status))
    if not status["running"]:
        raise typer.Exit(1)


def _watch(rendered: Callable, first, interval: float) -> None:
    """The tables, redrawn every ``interval`` seconds until Ctrl-C (then exit 0)."""
    from rich.live import Live

    try:
        with Live(first, console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(rendered(), refresh=True)
    except KeyboardInterrupt:
        pass


def serve_submit(
    name: str = typer.Argument(..., help="Model name, e.g. mace-mpa-0."),
    count: int = typer.Option(1, "--count", "-n", min=1, help="How many worker jobs."),
    broker: str = BROKER,
    models: list[Path] = typer.Option([], "--models", help="A models.py file defining "
                                      "ALL_MODELS, on the shared filesystem; repeat for more "
                                      "(besides the broker's own)."),
    worker_timeout: float | None = typer.Option(None, "--worker-timeout", help="Idle "
                                                "seconds after which a worker leaves "
                                                "(default: the broker's)."),
    slurm_partition: str | None = SLURM_PARTITION,
    slurm_gpus_per_worker: int | None = SLURM_GPUS,
    slurm_time: str | None = SLURM_TIME,
    slurm_account: str | None = SLURM_ACCOUNT,
    slurm_option: list[str] = SLURM_OPTION,
    slurm_command_timeout: float = SLURM_COMMAND_TIMEOUT,
) -> None:
    """Submit worker jobs to a running `serve-broker --launcher slurm`, with its sbatch
    options unless given here (--slurm-option adds to its own)."""
    from mlipx_serve.broker import submit
    from mlipx_serve.client.broker_status import get_broker_status

    status = get_broker_status(broker)
    settings = _or_fail_serving(lambda: submit.slurm_settings(status))
    if name not in settings["models"] and not models:
        _fail(f"the broker at {status['broker']} knows no model '{name}' (it knows "
              f"{', '.join(sorted(settings['models']))}); add one with --models FILE")
    options = submit.merged_options(settings, slurm_partition, slurm_gpus_per_worker, slurm_time,
                             slurm_account, slurm_option)
    command = submit.worker_command(settings, name, [str(p.absolute()) for p in models],
                             worker_timeout)
    ids = _or_fail_serving(lambda: submit.submit_workers(settings, name, count, options,
                                                         command, slurm_command_timeout))
    told = submit.tell_broker(status["broker"], paths.curve_options())  # as the status came
    _say(f"submitted {len(ids)} worker job(s) for '{name}': {', '.join(ids)}" +
         ("" if told else "; the broker did not answer, so it shows them once it looks at "
                          "squeue again"))
    print(" ".join(ids))


def _defined_model(text: str):
    from mlipx_serve.models.definitions import model_from
    from mlipx_serve.wire.definition import Definition

    try:
        return model_from(Definition.from_json(json.loads(text)))
    except ValueError as error:  # (a DefinitionError, or not JSON)
        _fail(f"--definition is not a model definition: {error}")


def _factory_model(name: str, path: Path):
    from mlipx_serve.client.notebook import FactoryModel, load_factory

    return FactoryModel(load_factory(path), name)


SERVE_COMMANDS = {"serve-broker": serve_broker, "serve": serve, "serve-status": serve_status,
                  "serve-submit": serve_submit}


def add_commands(target: typer.Typer) -> None:
    """Register the serve commands on ``target``: this app, or mlipx's own (once)."""
    present = {info.name for info in target.registered_commands}
    for name, command in SERVE_COMMANDS.items():
        if name not in present:
            target.command(name)(command)


add_commands(app)


def main() -> None:
    """The ``mlipx`` script: one command line, whichever package installed it last.

    The serve commands run at once (importing mlipx's command line takes seconds);
    everything else goes to mlipx's own command line, which has them too, when mlipx is
    installed. When mlipx is installed but its command line fails to load, say why.
    """
    argv = sys.argv[1:]
    if argv and argv[0] in SERVE_COMMANDS:
        app()
        return
    mlipx_app, failure = _mlipx_app()
    if mlipx_app is not None:
        mlipx_app()
        return
    asked_for_other = bool(argv) and not argv[0].startswith("-")
    if failure is not None:
        err.print(failure)
    elif asked_for_other:
        err.print(f"[bold red]error:[/] '{escape(argv[0])}' is not one of "
                  f"{', '.join(SERVE_COMMANDS)}; the other mlipx commands need mlipx: "
                  f"pip install mlipx")
    if asked_for_other:
        sys.exit(2)
    app()


def _mlipx_app() -> tuple[typer.Typer | None, str | None]:
    """mlipx's command line with ours added, or None and why not (None: not installed)."""
    if importlib.util.find_spec("mlipx") is None:
        return None, None
    try:
        from mlipx.cli.main import app as mlipx_app
    except Exception as error:  # installed, but broken: show the real cause
        where = traceback.extract_tb(error.__traceback__)[-1]
        return None, (
            f"[bold red]mlipx is installed, but its command line failed to load:[/] "
            f"{type(error).__name__}: {escape(str(error))}\n  (in {escape(where.filename)}, "
            f"line {where.lineno}; "
            f"`python -c 'import mlipx.cli.main'` shows the whole traceback)\n"
            f"Only the serve commands work until that is fixed.")
    add_commands(mlipx_app)
    return mlipx_app, None
