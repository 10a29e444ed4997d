"""A model broker assembled from its settings: the MDP broker on its client and worker
endpoints, with CURVE where asked, and with autostart the ``Autostarter`` and a launcher
(local processes, or SLURM jobs with their tcp worker side). Options that do not go
together, a key file that cannot be read, a broker already there: each is a
``SettingsError`` with the fix, raised before anything binds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mdp.broker import Broker, ipc_path
from mdp.client import ask
from mdp.core import BrokerConfig, ReplyFacts
from mdp.errors import MDPError
from mdp.metrics import metrics_address, serve_metrics
from mdp.security import CurveError, load_key_file
from mlipx_serve.broker.autostart import AutostartConfig, Autostarter
from mlipx_serve.broker.capacity import default_limit
from mlipx_serve.broker.cluster import ClusterSide
from mlipx_serve.broker.local_launcher import LocalLauncher
from mlipx_serve.broker.metrics import model_families
from mlipx_serve.broker.slurm import SlurmOptions
from mlipx_serve.broker.slurm_launcher import SlurmLauncher
from mlipx_serve.broker.unknown_names import UnknownNames
from mlipx_serve.errors import MlipxServeError, SettingsError
from mlipx_serve.models.catalogue import BUILTIN_MODELS
from mlipx_serve.models.models_file import load_registry
from mlipx_serve.wire.endpoints import local_broker, worker_endpoint
from mlipx_serve.wire.payload import structures_in, worker_report
from mlipx_serve.wire.private import open_to_others, private_dir
from mlipx_serve.wire.serving import DEFAULTS as SERVING_DEFAULTS
from mlipx_serve.wire.serving import ServingSettings
from mlipx_serve.wire.worker_options import WorkerOptions

Say = Callable[[str], None]


@dataclass
class BrokerSettings:
    """Everything ``mlipx serve-broker`` can be told; the defaults are its own."""

    path: str | None = None  # the clients' endpoint (default: the private one)
    autostart: bool = False
    models_files: list[Path] = field(default_factory=list)  # the models it may start
    serving: ServingSettings = ServingSettings()  # for the models that do not say
    start_timeout: float = 60.0  # seconds a started worker may take to register
    gpus: list[str] = field(default_factory=list)  # the GPUs its workers may use
    expiry: float = 900.0  # seconds a request may wait for a worker (0: for ever)
    heartbeat: float = 2.5
    curve_secret_key: Path | None = None
    curve_clients: Path | None = None
    accept_definitions: bool = False  # from clients on a plain tcp endpoint too
    launcher: str = "local"  # or "slurm"
    slurm: SlurmOptions = SlurmOptions()
    workers_bind: str | None = None  # slurm: the workers' tcp endpoint
    cluster_dir: Path | None = None
    orphan_timeout: float = 60.0
    slurm_poll: float = 5.0
    slurm_command_timeout: float = 30.0
    metrics: str | None = None  # [HOST:]PORT of the Prometheus endpoint; None: none
    max_workers: int | None = None  # worker processes at once (None: as the machine has; 0: any)

    def check(self) -> None:
        """The options that need others, or exclude them."""
        if self.models_files and not self.autostart:
            raise SettingsError("--models names the models the broker may start, so it needs "
                                "--autostart; a worker started by hand takes its own: mlipx "
                                "serve NAME --models FILE")
        if len(set(self.gpus)) != len(self.gpus):
            raise SettingsError(f"--gpus {','.join(self.gpus)} names a GPU twice")
        if self.launcher == "slurm":
            self._check_slurm()
        elif self.workers_bind or self.slurm != SlurmOptions():
            raise SettingsError("--workers-bind and the --slurm-* options need --launcher "
                                "slurm")

    def _check_slurm(self) -> None:
        if not self.autostart:
            raise SettingsError("--launcher says how --autostart starts workers, so it needs "
                                "--autostart")
        if self.gpus:
            raise SettingsError("--gpus spreads workers over this machine's GPUs; SLURM jobs "
                                "get theirs with --slurm-gpus-per-worker N")
        if self.curve_secret_key or self.curve_clients:
            raise SettingsError("--launcher slurm makes its own CURVE keys for the workers' "
                                "side and keeps the clients' side on the private ipc "
                                "socket; drop --curve-secret-key and --curve-clients")

    def definitions_refused(self, endpoint: str) -> str:
        """Why clients' model definitions are refused, or "" when they are taken: from
        whoever can reach the endpoint, a definition means code of their choice run here.
        Asked at each definition: a socket file's permissions may change."""
        if self.accept_definitions or (self.curve_secret_key and self.curve_clients):
            return ""
        why = open_to_others(endpoint) if endpoint.startswith("ipc://") else \
            "it is a network endpoint without CURVE client keys"
        if not why:
            return ""
        return (f"the broker at {endpoint} takes model definitions only from clients no "
                f"other user can be (an ipc socket closed to others, or CURVE-admitted "
                f"keys), and {why}: anyone who reaches it could run code of their choice "
                f"there. Restart it on a socket path of your own (the default, or "
                f"--path ipc:///PATH), with --curve-secret-key and --curve-clients, or, "
                f"where you trust everyone who can connect, with --accept-definitions")


class ModelBroker:
    """The broker ``settings`` describe, bound by ``run``; ``say`` tells the user where
    it listens once it is bound, and why it stopped."""

    def __init__(self, settings: BrokerSettings, say: Say):
        settings.check()
        self.settings, self.say = settings, say
        self.endpoint = settings.path or local_broker()
        self.workers = worker_endpoint(self.endpoint)
        self.cluster = self._cluster_side() if settings.launcher == "slurm" else None
        self.broker = self._broker()
        self.broker.core.weigh = lambda service, body: structures_in(body)  # in structures
        self.broker.core.read_reply = lambda service, body: ReplyFacts(*worker_report(body))
        self.broker.core.enable_timings()  # (serve-status shows the last minute's)
        if self._already_there():
            raise SettingsError(f"a broker already runs at {self.endpoint}; stop it first or "
                                f"pick another --path")
        self.starter = self._autostarter() if settings.autostart else None
        if not settings.autostart:
            UnknownNames(self.broker, BUILTIN_MODELS, self.workers)
        self.broker.call_soon(self._announce)  # in the loop, once bound

    def run(self) -> str:
        """Serve until Ctrl-C or SIGTERM; why it stopped."""
        if self.settings.metrics is not None:
            self._serve_metrics(self.settings.metrics)
        try:
            self.broker.run()
        except (OSError, CurveError) as error:
            raise SettingsError(str(error)) from None
        finally:
            if self.starter is not None:
                self.starter.stop_all()
            if self.cluster is not None:
                self.cluster.close()
        return self.broker.stop_reason or "asked to stop"

    # ------------------------------------------------------------ assembly

    def _serve_metrics(self, address: str) -> None:
        extra = [model_families] + ([self.starter.worker_events.families]
                                    if self.starter is not None else [])
        try:
            host, port = metrics_address(address)
            serve_metrics(self.broker, address, extra)
        except (OSError, ValueError) as error:
            raise SettingsError(f"--metrics {address}: {error}") from None
        self.say(f"Prometheus metrics at http://{host}:{port}/metrics")

    def _cluster_side(self) -> ClusterSide:
        directory = Path(self.settings.cluster_dir).absolute() \
            if self.settings.cluster_dir else None
        try:
            return ClusterSide.create(self.settings.workers_bind, directory)
        except (OSError, ValueError) as error:
            raise SettingsError(str(error)) from None

    def _broker(self) -> Broker:
        settings = self.settings
        binds = [self.endpoint] if self.workers == self.endpoint else \
            [self.endpoint, self.workers]
        config = BrokerConfig(heartbeat_interval=settings.heartbeat,
                              request_expiry=settings.expiry or None)
        security = self.cluster.broker_options() if self.cluster else {
            "curve_secret_key": settings.curve_secret_key,
            "curve_clients": settings.curve_clients}
        try:
            broker = Broker(binds, config=config, **security)
            if settings.autostart and settings.curve_secret_key and settings.curve_clients:
                # the workers it starts come with its own key pair (launcher options)
                broker.admit(load_key_file(settings.curve_secret_key)[0])
        except (CurveError, ValueError) as error:
            raise SettingsError(str(error)) from None
        return broker

    def _already_there(self) -> bool:
        """Does a broker answer here already? A CURVE one answers only a CURVE request,
        which this broker's own key pair makes (its secret file holds its public key)."""
        ipc = ipc_path(self.endpoint)
        if ipc is not None and not ipc.exists():
            return False
        key = None if self.cluster else self.settings.curve_secret_key
        tries = [{}] if key is None else [{}, {"curve_server_key": key, "curve_secret_key": key}]
        return any(_answers(self.endpoint, curve) for curve in tries)

    def _autostarter(self) -> Autostarter:
        settings = self.settings
        worker = WorkerOptions(
            "", heartbeat=settings.heartbeat,
            models_files=tuple(str(Path(path).absolute()) for path in settings.models_files))
        config = AutostartConfig(worker, settings.serving.over(SERVING_DEFAULTS),
                                 settings.start_timeout, tuple(settings.gpus),
                                 self._worker_limit())
        try:
            registry = load_registry([str(path) for path in settings.models_files] or None)
        except MlipxServeError as error:
            raise SettingsError(str(error)) from None
        return Autostarter(self.broker, registry, config, self._launcher(),
                           lambda: settings.definitions_refused(self.endpoint))

    def _worker_limit(self) -> int | None:
        """The broker's limit of worker processes: as given (0: none), else two a GPU or
        one a core here, and none for SLURM jobs, which the cluster places."""
        limit = self.settings.max_workers
        if limit is not None:
            return limit or None
        return None if self.cluster is not None else default_limit(self.settings.gpus)

    def _launcher(self) -> LocalLauncher | SlurmLauncher:
        settings = self.settings
        if self.cluster is None:
            return LocalLauncher(self.workers, private_dir() / "logs", settings.curve_secret_key)
        return SlurmLauncher(self.broker, self.cluster.broker_id, self.cluster.connection_file,
                             self.cluster.connection_file.parent / "logs", settings.slurm,
                             settings.orphan_timeout, settings.slurm_poll,
                             settings.slurm_command_timeout)

    # ------------------------------------------------------------ what the user reads

    def _announce(self) -> None:
        auto = f"on for {len(self.starter.registry)} models" if self.starter else "off"
        if self.cluster is not None:  # the bound port goes into the connection file
            connection = self.cluster.write_connection(self.broker.bound_endpoints[-1])
            self.say(f"model broker at {self.endpoint}; autostart {auto}, as SLURM jobs. "
                     f"Workers reach it at {connection.endpoint} (CURVE); a worker started "
                     f"by hand on a node needs only: mlipx serve NAME --connect "
                     f"{self.cluster.connection_file}. Ctrl-C stops it and cancels its jobs.")
            return
        settings = self.settings
        admits = f"the keys in {settings.curve_clients}" if settings.curve_clients else \
            "any key"
        curve = "" if settings.curve_secret_key is None else f"; CURVE, admitting {admits}"
        self.say(f"model broker at {self.endpoint} (workers: {self.workers}); autostart "
                 f"{auto}{curve}. Ctrl-C stops it.")


def _answers(endpoint: str, curve: dict) -> bool:
    try:
        ask(endpoint, "mmi.service", "mmi.status", timeout=0.5, **curve)
        return True
    except MDPError:
        return False
