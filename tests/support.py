"""What every system test needs: waiting on a condition, and child processes with logs."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

PROJECT = Path(__file__).resolve().parents[1]  # the checkout
HELPERS = PROJECT / "tests" / "mlipx_serve" / "helpers"  # models files, client scripts


def copper_cells(count: int, rattle: float) -> list:
    """``count`` cubic Cu cells of 4 atoms, each moved ``rattle`` Å at random, seed by seed."""
    from ase.build import bulk

    found = []
    for seed in range(count):
        atoms = bulk("Cu", cubic=True)
        atoms.rattle(rattle, seed=seed)
        found.append(atoms)
    return found


def wait_until(condition: Callable[[], T], what: str, timeout: float,
               interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A tcp port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scraped(port: int) -> Callable[..., float]:
    """One scrape of a Prometheus endpoint on 127.0.0.1, read with prometheus_client's own
    parser, as ``sample(name, **labels) -> value``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    found = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
             for family in text_string_to_metric_families(text.decode())
             for sample in family.samples}
    return lambda name, **labels: found[name, tuple(sorted(labels.items()))]


def load_module(path: Path, name: str):
    """A helper file as a module of its own (test folders are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Proc:
    """A child process with its output in a log file, ended by its pid."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None):
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1") if env is None else env
        self.popen = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def end(self, grace: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL; always reaped. Returns the exit status."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid}>"
