"""Workers as processes on the broker's own machine: ``mlipx serve`` with the broker's
worker endpoint, spread over the GPUs given, the CPU cores shared out among them."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlipx_serve.broker.launch import Launch, worker_env
from mlipx_serve.processes import end_processes, start_logged
from mlipx_serve.wire.worker_options import WorkerOptions

log = logging.getLogger(__name__)


@dataclass
class LocalLaunch:
    model: str
    process: subprocess.Popen
    started_at: float
    log_path: Path
    gpu: str | None = None  # its CUDA_VISIBLE_DEVICES

    def ended(self) -> str | None:
        code = self.process.poll()
        return None if code is None else f"the worker exited with code {code}"

    def progress(self) -> str:
        return "installing and loading the model"

    def timed_out(self, seconds: float) -> str:
        return f"the worker did not register within {seconds:g} s"


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_share(workers: int, cores: int | None = None) -> int | None:
    """CPU threads each of ``workers`` worker processes on one machine may use: its cores
    shared out, or None for a single worker, which may have them all. Without a share each
    process's thread pools (torch's, BLAS's) take every core: two CHGNet workers on two
    cores evaluated 1-2 structures/s that way, and 5.8-7.9 with one thread each."""
    if workers <= 1:
        return None
    return max(1, (cores or os.cpu_count() or 1) // workers)


@dataclass
class LocalLauncher:
    """``mlipx serve`` processes on this machine, each on one of the GPUs its model may use
    (if any), with its share of the CPU threads (``thread_share``) unless the broker's
    environment sets them."""

    endpoint: str
    log_dir: Path
    curve_key: Path | None = None  # the broker's NAME.key_secret, when it uses CURVE
    started: list[LocalLaunch] = field(default_factory=list)  # not yet seen to end

    def launch(self, options: WorkerOptions, gpus: Sequence[str] = (),
               threads: int | None = None) -> LocalLaunch:
        model = options.model
        log_path = self.log_dir / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        gpu = self._least_used_gpu(model, gpus)
        env = worker_env()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        for variable in THREAD_VARIABLES if threads else ():
            env.setdefault(variable, str(threads))
        process = start_logged(self.options(options).command(), log_path, env)
        on = "" if gpu is None else f" on GPU {gpu}"
        log.info("starting a worker for '%s'%s (pid %d, output in %s)", model, on, process.pid,
                 log_path)
        launch = LocalLaunch(model, process, time.monotonic(), log_path, gpu)
        self.started.append(launch)
        return launch

    def options(self, options: WorkerOptions) -> WorkerOptions:
        """Where the worker finds this broker, and that it leaves when the broker ends."""
        key = None if self.curve_key is None else str(Path(self.curve_key).absolute())
        # (the broker's secret key file holds its public key too)
        return dataclasses.replace(options, broker=self.endpoint, exit_with=os.getpid(),
                                   curve_server_key=key, curve_secret_key=key)

    def _least_used_gpu(self, model: str, gpus: Sequence[str]) -> str | None:
        """Of ``gpus``, the one with the fewest workers of this model, then of any."""
        if not gpus:
            return None
        alive = self._alive()
        return min(gpus, key=lambda gpu: (
            sum(s.gpu == gpu and s.model == model for s in alive),
            sum(s.gpu == gpu for s in alive)))

    def stop(self, launch: Launch) -> None:
        launch.process.kill()

    def running(self) -> int:
        return len(self._alive())

    def started_it(self, metadata: dict) -> bool:
        return self._launch_of(metadata) is not None

    def retire(self, metadata: dict) -> bool:
        """SIGTERM: an idle worker leaves at once, as it does when its idle time is up."""
        launch = self._launch_of(metadata)
        if launch is None:
            return False
        launch.process.terminate()
        return True

    def _launch_of(self, metadata: dict) -> LocalLaunch | None:
        pid = metadata.get("pid")
        return next((s for s in self._alive() if s.process.pid == pid), None)

    def busy(self) -> bool:
        return bool(self._alive())

    def _alive(self) -> list[LocalLaunch]:
        """The processes it started that have not ended (those that have are dropped)."""
        self.started = [s for s in self.started if s.process.poll() is None]
        return self.started

    def status(self) -> dict[str, Any]:
        return {"launcher": "local", "started_pids": [s.process.pid for s in self._alive()]}

    def stop_all(self, grace: float) -> None:
        end_processes([s.process for s in self.started], grace)
