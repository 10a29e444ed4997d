"""Start model workers on demand, from inside the broker's loop without ever blocking it.

The broker reports a request that found no idle worker as a "demand" event; this module
starts ``mlipx serve NAME`` for it (``Popen`` returns at once) and checks on the starting
process with timers. When a start fails, every client waiting for that model gets an
error carrying the worker's last lines of output, such as what uv could not install.

A broker that uses CURVE gives the workers it starts its own key pair, both to know it by
and as their client key, so it must admit its own public key: ``admit_broker_key``. That
opens nothing: whoever holds the broker's secret key can pose as the broker anyway.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq.auth

from mdp.broker import Broker
from mdp.core import Event
from mdp.errors import ServiceStartFailed
from mdp.security import load_key_file

from . import environment
from .extras import model_extras

log = logging.getLogger("mlipx_serve.autostart")

CHECK_INTERVAL = 0.25
LOG_TAIL_LINES = 20


def wants_worker(event: Event, starting: bool, max_workers: int) -> bool:
    """Start one more worker? One start at a time per model, up to ``max_workers``."""
    if event.kind != "demand" or starting:
        return False
    if event.workers == 0:
        return True
    idle = event.workers - event.busy
    return event.queued > idle and event.workers < max_workers


@dataclass
class Start:
    model: str
    process: subprocess.Popen
    started_at: float
    log_path: Path
    gpu: str | None = None  # its CUDA_VISIBLE_DEVICES


@dataclass
class AutostartConfig:
    worker_endpoint: str
    log_dir: Path
    start_timeout: float = 60.0
    worker_timeout: float = 300.0
    max_workers: int = 1
    heartbeat: float = 2.5  # the broker's: a worker must heartbeat as often as it expects
    models_files: list[str] = field(default_factory=list)
    curve_key: Path | None = None  # the broker's NAME.key_secret, when it uses CURVE
    gpus: list[str] = field(default_factory=list)  # spread workers over these, max_workers each
    batch_size: int = 1  # passed on to the workers: `mlipx serve --batch-size`
    batch_wait: float = 0.01

    @property
    def workers_per_model(self) -> int:
        return self.max_workers * max(1, len(self.gpus))


class Autostarter:
    def __init__(self, broker: Broker, registry: Mapping[str, object], config: AutostartConfig):
        self.broker = broker
        self.registry = registry
        self.config = config
        self.starting: dict[str, Start] = {}
        self.started: list[Start] = []  # every worker started and not yet seen to end
        self._checking = False
        broker.add_hook(self.on_event)
        broker.add_mmi_handler("mmi.mlipx", self.mmi_status)

    # ------------------------------------------------------------ events

    def on_event(self, event: Event) -> None:
        if event.kind == "worker-ready":
            start = self.starting.pop(event.service, None)
            if start is not None:
                log.info("worker for '%s' came up in %.1f s", event.service,
                         time.monotonic() - start.started_at)
        elif event.service in self.registry and wants_worker(
                event, event.service in self.starting, self.config.workers_per_model):
            self.start(event.service)

    def start(self, name: str) -> None:
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.config.log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        gpu = self._least_used_gpu(name)
        env = worker_env() if gpu is None else {**worker_env(), "CUDA_VISIBLE_DEVICES": gpu}
        with open(log_path, "ab") as output:
            process = subprocess.Popen(self.worker_command(name), stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        on = "" if gpu is None else f" on GPU {gpu}"
        log.info("starting a worker for '%s'%s (pid %d, output in %s)", name, on, process.pid,
                 log_path)
        start = Start(name, process, time.monotonic(), log_path, gpu)
        self.started.append(start)
        self.starting[name] = start
        self._schedule_check()

    def _least_used_gpu(self, name: str) -> str | None:
        """The GPU with the fewest workers of this model, then the fewest of any."""
        if not self.config.gpus:
            return None
        alive = [s for s in self.started if s.process.poll() is None]
        return min(self.config.gpus, key=lambda gpu: (
            sum(s.gpu == gpu and s.model == name for s in alive),
            sum(s.gpu == gpu for s in alive)))

    def worker_command(self, name: str) -> list[str]:
        command = [sys.executable, "-m", "mlipx_serve.cli", "serve", name,
                   "--broker", self.config.worker_endpoint,
                   "--timeout", str(self.config.worker_timeout),
                   "--heartbeat", str(self.config.heartbeat),
                   "--exit-with", str(os.getpid())]
        if self.config.batch_size > 1:
            command += ["--batch-size", str(self.config.batch_size),
                        "--batch-wait", str(self.config.batch_wait)]
        for path in self.config.models_files:
            command += ["--models", str(path)]
        if self.config.curve_key is not None:  # the secret file holds the public key too
            key = str(Path(self.config.curve_key).absolute())
            command += ["--curve-server-key", key, "--curve-secret-key", key]
        return command

    # ------------------------------------------------------------ checks

    def _schedule_check(self) -> None:
        if not self._checking:
            self._checking = True
            self.broker.call_later(CHECK_INTERVAL, self._check)

    def _check(self) -> None:
        self._checking = False
        now = time.monotonic()
        for name, start in list(self.starting.items()):
            code = start.process.poll()
            if code is not None:
                self._failed(name, start, f"the worker exited with code {code} before it "
                                          f"registered")
            elif now - start.started_at > self.config.start_timeout:
                start.process.kill()
                self._failed(name, start, f"the worker did not register within "
                                          f"{self.config.start_timeout:g} s")
        self.started = [start for start in self.started if start.process.poll() is None]
        if self.starting or self.started:
            self._schedule_check()

    def _failed(self, name: str, start: Start, why: str) -> None:
        del self.starting[name]
        if self.broker.service_workers(name):
            log.warning("an extra worker for '%s' failed to start: %s", name, why)
            return
        message = (f"could not start model '{name}': {why}. Last lines of its output "
                   f"({start.log_path}):\n{tail(start.log_path)}")
        log.error(message)
        self.broker.fail_queued(name, ServiceStartFailed(message, name))

    # ------------------------------------------------------------ status and stop

    def mmi_status(self, body: list) -> list[bytes]:
        now = time.monotonic()
        models = {name: {"extras": model_extras(model), "autostart": True}
                  for name, model in self.registry.items()}
        status = {
            "autostart": True,
            "models": models,
            "starting": {name: now - s.started_at for name, s in self.starting.items()},
            "started_pids": [s.process.pid for s in self.started if s.process.poll() is None],
            "gpus": {str(s.process.pid): s.gpu for s in self.started if s.gpu is not None},
            "start_timeout": self.config.start_timeout,
            "worker_timeout": self.config.worker_timeout,
            "max_workers": self.config.workers_per_model,
        }
        return [json.dumps(status).encode()]

    def stop_all(self, grace: float = 10.0) -> None:
        """End every worker this broker started; called after the broker's loop ends."""
        alive = [s.process for s in self.started if s.process.poll() is None]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in alive:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def worker_env() -> dict[str, str]:
    """The broker's environment, without the CURVE keys meant for its clients: a started
    worker uses exactly the keys its command line gives (none for a plain broker)."""
    return {key: value for key, value in os.environ.items() if key not in environment.CURVE}


def admit_broker_key(clients: Path, secret_key_file: Path, scratch: Path) -> Path:
    """``clients`` if it admits the broker's own public key, else a copy of its keys plus
    that one, in a new directory under ``scratch`` (the caller removes it)."""
    public_key, _ = load_key_file(secret_key_file)
    if public_key in zmq.auth.load_certificates(clients):  # a bad file: ValueError
        return clients
    admitted = Path(tempfile.mkdtemp(prefix="curve-clients-", dir=scratch))
    for key_file in Path(clients).glob("*.key"):
        shutil.copy(key_file, admitted)
    own = admitted / "mlipx-autostart-broker.key"
    own.write_text(f'# the broker\'s own key, for the workers it starts\ncurve\n'
                   f'    public-key = "{public_key.decode()}"\n')
    return admitted


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no output: {error})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"
