"""Many structures from one script: a sequential loop against map(), side by side.

One broker, and for each model (``emt``: EMT on 32-atom Cu cells, CPU-bound, about 2.6 ms
a call here; ``device``: ``bench/models.py``'s stand-in for a GPU model, which sleeps a
fixed time per call, ``--device-call``, plus 0.2 ms per structure) these worker set-ups,
each under a name of its own so that all wait side by side and nothing is restarted
between turns:

- ``MODEL-one``: one worker; the sequential ``RemoteCalculator`` loop and ``map`` use it,
  ``map`` both with its chunks (several small structures a request, the default) and
  with ``chunk_size=1`` (one structure a request);
- ``MODEL-prefetch``: one worker that takes one request ahead (``--prefetch 1``), for ``map``;
- ``MODEL-many``: ``--workers`` workers, for ``map``;
- ``MODEL-batched``: one batching worker (``--batch-size``), for ``map``;

and, in this process, a local loop. The systems take turns within each repetition; the
table shows the median structures/s over repetitions and the ratios the targets name.

    python bench/throughput.py                    # about 2-4 minutes
    python bench/throughput.py --models device --structures 400 --repetitions 5
    python bench/throughput.py --models chgnet --workers 4 --batch-size 16   # GPU host

``chgnet`` (32-atom Cu cells) needs chgnet installed; its workers load the model with
``--no-uv``. On a GPU host all of them share the one GPU, as the issue's figures did.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from ase import Atoms
from ase.build import bulk

from mlipx_serve import RemoteCalculator, evaluate
from mlipx_serve.broker.local_launcher import THREAD_VARIABLES, thread_share
from mlipx_serve.client.broker_status import get_broker_status
from mlipx_serve.processes import end_processes

BENCH = Path(__file__).resolve().parent
MODELS_FILE = BENCH / "models.py"
CLI = [sys.executable, "-m", "mlipx_serve.cli"]
START_TIMEOUT = 300.0

SEQUENTIAL = "sequential RemoteCalculator, 1 worker"
ONE_A_REQUEST = "map, 1 worker, 1 structure a request"
ONE = "map, 1 worker"
PREFETCHING = "map, 1 worker prefetching 1"
MANY = "map, N workers"
BATCHED = "map, 1 worker batching"
LOCAL = "local loop"


def cells(count: int) -> list[Atoms]:
    found = []
    for i in range(count):
        atoms = bulk("Cu", cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=i)
        found.append(atoms)
    return found


def local_calculator(model: str):
    if model == "chgnet":
        from chgnet.model import CHGNetCalculator

        return CHGNetCalculator()
    if model == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    from bench_calculators import DeviceLikeCalculator  # (this script's folder is on the path)

    return DeviceLikeCalculator()


# ------------------------------------------------------------ the compared systems


def sequential(endpoint: str, name: str, structures: list[Atoms]) -> None:
    with RemoteCalculator(name, endpoint) as calc:
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = calc
            atoms.get_potential_energy()
            atoms.get_forces()


def mapped(endpoint: str, name: str, structures: list[Atoms], in_flight: int,
           chunk_size: int | None = None) -> None:
    evaluate(name, structures, broker=endpoint, max_in_flight=in_flight, progress=False,
             chunk_size=chunk_size)


def local_loop(calc, structures: list[Atoms]) -> None:
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        atoms.get_forces()


# ------------------------------------------------------------ processes


class Process:
    """A child with its output in a log file; ended by its pid, never by name."""

    def __init__(self, name: str, args: list[str], directory: Path,
                 env: dict[str, str] | None = None):
        self.name = name
        self.log = directory / f"{name}.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL,
                                          env=None if env is None else {**os.environ, **env})

    def stop(self) -> None:
        end_processes([self.popen], 15)


def wait_for(endpoint: str, name: str, connections: int, processes: list[Process]) -> None:
    print(f"  waiting for {connections} '{name}' worker connection(s) ...", flush=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for process in processes:
            if process.popen.poll() is not None:
                sys.exit(f"{process.name} exited:\n{process.log.read_text()[-2000:]}")
        status = get_broker_status(endpoint, timeout=1.0)
        found = status["status"]["services"].get(name, {}) if status["running"] else {}
        if found.get("workers", 0) >= connections:
            return
        time.sleep(0.2)
    sys.exit(f"no {connections} '{name}' workers within {START_TIMEOUT:g} s")


def start_workers(stack: ExitStack, directory: Path, model: str, workers: int,
                  batch_size: int) -> str:
    endpoint = f"ipc://{directory}/b.ipc"
    broker = Process("broker", [*CLI, "serve-broker", "--path", endpoint], directory)
    stack.callback(broker.stop)
    wait_for_broker(endpoint, broker)
    common = ["--broker", f"ipc://{directory}/b-workers.ipc", "--no-uv", "--timeout", "0",
              "--models", str(MODELS_FILE)]
    setups = {"one": (1, [], 1), "prefetch": (1, ["--prefetch", "1"], 2),
              "many": (workers, [], 1),
              "batched": (1, ["--batch-size", str(batch_size), "--batch-wait", "0.02"],
                          batch_size)}
    for setup, (count, options, connections) in setups.items():
        name = f"{model}-{setup}"
        threads = thread_share(count)  # the cores shared out, as autostart does
        env = {} if threads is None else \
            {var: os.environ.get(var, str(threads)) for var in THREAD_VARIABLES}
        started = [Process(f"{name}-{i}", [*CLI, "serve", name, *common, *options], directory,
                           env) for i in range(count)]
        for process in started:
            stack.callback(process.stop)
        wait_for(endpoint, name, count * connections, started)
    return endpoint


def wait_for_broker(endpoint: str, broker: Process) -> None:
    deadline = time.monotonic() + 30
    while not get_broker_status(endpoint, timeout=0.5)["running"]:
        if broker.popen.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the broker did not come up:\n{broker.log.read_text()}")


# ------------------------------------------------------------ the run


def bench_model(model: str, args: argparse.Namespace) -> dict[str, float]:
    structures = cells(args.structures)
    in_flight = args.in_flight
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="mlipx-tput-"))
        stack.callback(shutil.rmtree, directory, True)
        endpoint = start_workers(stack, directory, model, args.workers, args.batch_size)
        calc = local_calculator(model)
        systems: dict[str, Callable[[], None]] = {
            SEQUENTIAL: lambda: sequential(endpoint, f"{model}-one", structures),
            ONE_A_REQUEST: lambda: mapped(endpoint, f"{model}-one", structures, in_flight, 1),
            ONE: lambda: mapped(endpoint, f"{model}-one", structures, in_flight),
            PREFETCHING: lambda: mapped(endpoint, f"{model}-prefetch", structures, in_flight),
            MANY: lambda: mapped(endpoint, f"{model}-many", structures, in_flight),
            BATCHED: lambda: mapped(endpoint, f"{model}-batched", structures, in_flight),
            LOCAL: lambda: local_loop(calc, structures),
        }
        for run in systems.values():  # warm-up: imports, first sockets, lazy model set-up
            run()
        rates: dict[str, list[float]] = {label: [] for label in systems}
        for repetition in range(args.repetitions):
            for label, run in systems.items():
                start = time.perf_counter()
                run()
                rates[label].append(len(structures) / (time.perf_counter() - start))
            print(f"  repetition {repetition + 1}/{args.repetitions}: " + ", ".join(
                f"{values[-1]:.1f}" for values in rates.values()) + " structures/s", flush=True)
    return {label: statistics.median(values) for label, values in rates.items()}


def report(model: str, rates: dict[str, float], workers: int, batch: int) -> None:
    print(f"\n{model}: structures per second, medians (N = {workers}, batches of {batch})")
    for label, rate in rates.items():
        print(f"  {label:<42} {rate:9.1f}")
    ratios = [
        (ONE, LOCAL, ">= 1.0x"),
        (ONE_A_REQUEST, LOCAL, "(before chunks)"),
        (MANY, LOCAL, ">= 1.8x for 'device' with 2; >= 2.5x with 4 on a GPU host"),
        (ONE, SEQUENTIAL, ">= 1.5x"),
        (PREFETCHING, SEQUENTIAL, ">= 1.5x"),
        (MANY, ONE, ">= 1.7x with 2 on 2 cores"),
        (BATCHED, ONE, ">= 1.6x for CHGNet batch 16 on a GPU host"),
    ]
    for top, bottom, target in ratios:
        print(f"  {top + ' / ' + bottom:<62} {rates[top] / rates[bottom]:5.2f}x  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["emt", "device"],
                        choices=["emt", "device", "chgnet"])
    parser.add_argument("--structures", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--device-call", type=float, default=0.001,
                        help="seconds per call of the 'device' stand-in (default 0.001)")
    args = parser.parse_args()
    os.environ["BENCH_DEVICE_CALL"] = str(args.device_call)  # for its workers and the local one
    for model in args.models:
        print(f"{model}: {args.structures} structures, {args.repetitions} repetitions",
              flush=True)
        report(model, bench_model(model, args), args.workers, args.batch_size)


if __name__ == "__main__":
    main()
