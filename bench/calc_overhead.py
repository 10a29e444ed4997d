"""What a served calculator adds per call, side by side with ASE's SocketIOCalculator.

One run, three ways to get energy and forces for the same periodic cell from a calculator
that does almost no work (``bench/models.py``'s ``zero``), so that what they differ by is
the transport:

- local: the calculator in this process;
- RemoteCalculator: client -> broker -> worker and back, broker and worker in processes
  of their own (``mlipx serve-broker``, ``mlipx serve zero --models bench/models.py``),
  over IPC sockets; asking by name alone, and ("RemoteCalc.+model") with the model's
  definition in each request, which the worker checks (protocol/model-definition.md);
- SocketIOCalculator: ASE's own client-server calculator (i-PI protocol over a unix
  socket), its client side (``SocketClient`` with the same calculator) in another process.

Each call moves one atom, then asks for the energy and the forces. The systems take turns
repetition by repetition, so that a noisy neighbour hits them alike; a repetition's wall
time is the median of its calls, and the table shows the median over repetitions. Beside
it, CPU time per call summed over every process involved (this one with its zmq threads,
broker, worker, socket client), which a busy machine disturbs far less than wall time.
"added" is per call minus local; the target is RemoteCalculator adding less than
SocketIOCalculator, broker hop included. Last, RemoteCalculator's CPU per call process by
process: where its time goes. It runs for 64 atoms and for 100,000.

Last, the time to a first energy from a fresh Python process: served CHGNet (broker and
worker already running; the process imports ase and mlipx_serve and asks once) against
CHGNet loaded in that process. Skipped, saying so, when chgnet is not installed.

    python bench/calc_overhead.py                       # about 1.5-3 minutes
    python bench/calc_overhead.py --parts small --repetitions 3
    python bench/calc_overhead.py --parts chgnet --chgnet-runs 5
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.socketio import SocketClient, SocketIOCalculator
from bench_calculators import ZeroCalculator

from mlipx_serve.client.broker_status import available_models, get_broker_status
from mlipx_serve.client.calculator import RemoteCalculator
from mlipx_serve.processes import end_processes
from mlipx_serve.wire.definition import Definition

BENCH = Path(__file__).resolve().parent
MODELS_FILE = BENCH / "models.py"
CLI = [sys.executable, "-m", "mlipx_serve.cli"]
PARTS = ("small", "large", "chgnet")
START_TIMEOUT = 180.0  # seconds a worker may take to load its model and register
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------ structures and calculators


def make_atoms(count: int) -> Atoms:
    """A periodic box of ``count`` copper atoms at about solid density; the same every time,
    so that a SocketClient in another process can build its own copy."""
    rng = np.random.default_rng(0)
    side = (count * 11.8) ** (1 / 3)
    positions = rng.uniform(0.0, side, (count, 3))
    return Atoms(numbers=np.full(count, 29), positions=positions, cell=[side] * 3, pbc=True)


def zero_calculator() -> Calculator:
    return ZeroCalculator()


# ------------------------------------------------------------ processes


class Service:
    """A child process with its output in a log file; ended by its pid, never by name."""

    def __init__(self, name: str, args: list[str], log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        end_processes([self.proc], timeout)


def wait_for_model(endpoint: str, model: str, worker: Service, timeout: float) -> None:
    """Block until the broker lists a worker for ``model``; say what is being waited for."""
    print(f"  waiting for a '{model}' worker to register at {endpoint} ...", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the '{model}' worker exited:\n{worker.tail()}")
        info = available_models(get_broker_status(endpoint, timeout=1.0)).get(model)
        if info and info["workers"]:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no '{model}' worker registered within {timeout:g} s:\n{worker.tail()}")


@contextmanager
def served(model: str, extra_args: list[str]) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A broker and one worker for ``model``, in a short private temp dir; yields the
    clients' endpoint and both processes, and stops them afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="mlipx-bench-"))
    endpoint = f"ipc://{directory}/b.ipc"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, True)
        broker = Service("broker", [*CLI, "serve-broker", "--path", endpoint], directory)
        stack.callback(broker.stop)
        worker_args = ["serve", model, "--broker", f"ipc://{directory}/b-workers.ipc",
                       "--no-uv", "--timeout", "0", *extra_args]
        worker = Service(model, [*CLI, *worker_args], directory)
        stack.callback(worker.stop)
        wait_for_model(endpoint, model, worker, START_TIMEOUT)
        yield endpoint, [broker.proc, worker.proc]


# ------------------------------------------------------------ the three systems


@dataclass
class System:
    """Atoms with their calculator, and the other processes that work for it."""

    atoms: Atoms
    helpers: list[subprocess.Popen]

    def cpu_seconds(self) -> list[float]:
        """CPU time (user + system) of this process and of each helper, all threads."""
        return [time.process_time(), *(process_cpu(proc.pid) for proc in self.helpers)]


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextmanager
def remote_system(atoms: Atoms, definition: Definition | None = None) -> Iterator[System]:
    """``definition``: each request names the model, which its worker checks."""
    with served("zero", ["--models", str(MODELS_FILE)]) as (endpoint, procs):
        calc = RemoteCalculator("zero", broker=endpoint, timeout=60.0, definition=definition)
        try:
            yield System(attach(atoms, calc), procs)
        finally:
            calc.close()


def checked_remote_system(atoms: Atoms) -> Iterator[System]:
    return remote_system(atoms, zero_definition())


def zero_definition() -> Definition:
    from models import ZERO  # bench/models.py, as this script's folder is on the path

    return ZERO.definition()


@contextmanager
def socketio_system(atoms: Atoms) -> Iterator[System]:
    """ASE's server in this process; it starts the client process on its first call."""
    clients: list[subprocess.Popen] = []

    def launch(atoms, properties=None, port=None, unixsocket=None):
        args = [sys.executable, __file__, "--socketio-client", unixsocket, str(len(atoms))]
        clients.append(subprocess.Popen(args))
        return clients[-1]

    calc = SocketIOCalculator(launch_client=launch, unixsocket=f"mlipx-bench-{os.getpid()}")
    try:
        yield System(attach(atoms, calc), clients)  # the list fills on the first call
    finally:
        calc.close()
        for proc in clients:
            end_processes([proc], 10.0)


@contextmanager
def local_system(atoms: Atoms) -> Iterator[System]:
    yield System(attach(atoms, zero_calculator()), [])


def attach(atoms: Atoms, calc: Calculator) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms


def run_socketio_client(unixsocket: str, count: int) -> None:
    """The client side of SocketIOCalculator, run in its own process."""
    atoms = make_atoms(count)
    atoms.calc = zero_calculator()
    SocketClient(unixsocket=unixsocket).run(atoms, use_stress=True)


SYSTEMS: dict[str, Callable] = {
    "local": local_system,
    "RemoteCalculator": remote_system,
    "RemoteCalc.+model": checked_remote_system,  # the model's fingerprint, checked
    "SocketIOCalculator": socketio_system,
}


# ------------------------------------------------------------ timing


def time_calls(system: System, calls: int) -> tuple[float, list[float]]:
    """Median wall seconds per call, and CPU seconds per call of every process involved
    (this one first). Each call moves an atom, so nothing comes from a cache."""
    atoms = system.atoms
    positions = atoms.positions  # the atoms' own array: moving it changes the atoms
    times = []
    cpu = system.cpu_seconds()
    for i in range(calls):
        positions[0, 0] += 1e-3 if i % 2 else -1e-3
        start = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    after = system.cpu_seconds()
    cpu += [0.0] * (len(after) - len(cpu))  # a helper that the first call started
    return statistics.median(times), [(a - b) / calls for a, b in zip(after, cpu, strict=True)]


Results = dict[str, dict[str, list]]  # system -> "wall" / "cpu" / "parts" -> one per repetition


def measure(count: int, calls: int, repetitions: int) -> Results:
    """Systems take turns in each repetition, so that noise from outside hits them alike."""
    template = make_atoms(count)
    results: Results = {name: {"wall": [], "cpu": [], "parts": []} for name in SYSTEMS}
    with ExitStack() as stack:
        systems = {name: stack.enter_context(make(template)) for name, make in SYSTEMS.items()}
        for system in systems.values():
            time_calls(system, max(3, calls // 10))  # connect, start clients, warm caches
        for _ in range(repetitions):
            for name, system in systems.items():
                wall, parts = time_calls(system, calls)
                results[name]["wall"].append(wall)
                results[name]["cpu"].append(sum(parts))
                results[name]["parts"].append(parts)
    return results


# ------------------------------------------------------------ reporting


def duration(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us" if abs(seconds) < 0.01 else f"{seconds * 1e3:,.2f} ms"


def report_overhead(count: int, calls: int, results: Results) -> None:
    repetitions = len(results["local"]["wall"])
    print(f"\n{count:,} atoms, periodic; energy+forces per call; {repetitions} repetitions x "
          f"{calls} calls.\n  wall: median per repetition, then median over repetitions; "
          f"CPU: all processes involved, median over repetitions")
    print(f"  {'system':<19} {'wall/call':>10} {'min..max of reps':>22} {'added':>10}"
          f" {'CPU/call':>10} {'added':>10}")
    local = {kind: statistics.median(results["local"][kind]) for kind in ("wall", "cpu")}
    added: dict[str, dict[str, float]] = {}
    for name, values in results.items():
        wall, cpu = statistics.median(values["wall"]), statistics.median(values["cpu"])
        added[name] = {"wall": wall - local["wall"], "cpu": cpu - local["cpu"]}
        spread = f"{duration(min(values['wall']))}..{duration(max(values['wall']))}"
        extra = ["", ""] if name == "local" else [duration(added[name][k]) for k in added[name]]
        print(f"  {name:<19} {duration(wall):>10} {spread:>22} {extra[0]:>10}"
              f" {duration(cpu):>10} {extra[1]:>10}")
    for kind in ("wall", "cpu"):
        report_ratio(kind, added["RemoteCalculator"][kind], added["SocketIOCalculator"][kind])
    checked = {kind: added["RemoteCalc.+model"][kind] - added["RemoteCalculator"][kind]
               for kind in ("wall", "cpu")}
    print(f"  the model's definition in each request, checked by the worker: "
          f"{duration(checked['wall'])} wall, {duration(checked['cpu'])} CPU per call")
    remote = results["RemoteCalculator"]["parts"]
    parts = [statistics.median(column) for column in zip(*remote, strict=True)]
    print("  RemoteCalculator's CPU per call: " + ", ".join(
        f"{who} {duration(seconds)}" for who, seconds in zip(
            ("this process (ASE, client)", "broker", "worker"), parts, strict=True)))


def report_ratio(kind: str, ours: float, theirs: float) -> None:
    ratio = ours / theirs
    verdict = "met" if ratio < 1 else "NOT met"
    print(f"  added {kind:<4} RemoteCalculator / SocketIOCalculator = {ratio:.2f} "
          f"(SocketIOCalculator adds {1 / ratio:.1f}x as much); target < 1: {verdict}")


# ------------------------------------------------------------ CHGNet: time to first energy

SERVED_SCRIPT = """
import sys
from ase.build import bulk
from mlipx_serve.client.calculator import RemoteCalculator
from mlipx_serve.processes import end_processes
atoms = bulk("Si", "diamond", a=5.43, cubic=True)
atoms.calc = RemoteCalculator("chgnet", broker=sys.argv[1], timeout=120)
print("ENERGY", atoms.get_potential_energy(), flush=True)
"""

LOCAL_SCRIPT = """
from ase.build import bulk
from chgnet.model import CHGNetCalculator
atoms = bulk("Si", "diamond", a=5.43, cubic=True)
atoms.calc = CHGNetCalculator()
print("ENERGY", atoms.get_potential_energy(), flush=True)
"""


def first_energy(script: str, *args: str) -> tuple[float, float]:
    """Seconds from starting a fresh interpreter to its first energy, and the energy."""
    command = [sys.executable, "-c", script, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith("ENERGY "):
                return time.perf_counter() - start, float(line.split()[1])
        raise RuntimeError(f"{command[:3]} ended without an energy (exit {proc.wait()})")
    finally:
        proc.stdout.close()
        end_processes([proc], 30.0)


def measure_chgnet(runs: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {"served": [], "local": []}
    with served("chgnet", []) as (endpoint, _):
        first_energy(SERVED_SCRIPT, endpoint)  # the worker's first call warms it up
        for _ in range(runs):
            results["served"].append(first_energy(SERVED_SCRIPT, endpoint))
            results["local"].append(first_energy(LOCAL_SCRIPT))
    return results


def report_chgnet(results: dict[str, list[tuple[float, float]]]) -> None:
    runs = len(results["served"])
    print(f"\nCHGNet, time to a first energy from a fresh Python process (Si, 8 atoms; "
          f"median of {runs} runs)")
    print(f"  {'system':<38} {'median':>9} {'min..max':>16} {'energy (eV)':>14}")
    medians = {}
    for name, label in (("served", "served (broker + worker running)"),
                        ("local", "local (import chgnet, load, compute)")):
        seconds = [s for s, _ in results[name]]
        medians[name] = statistics.median(seconds)
        energy = results[name][0][1]
        spread = f"{min(seconds):.2f}..{max(seconds):.2f} s"
        print(f"  {label:<38} {medians[name]:>7.2f} s {spread:>16} {energy:>14.6f}")
    print(f"  served is {medians['local'] / medians['served']:.1f}x faster to a first energy")


def chgnet_part(runs: int) -> None:
    if importlib.util.find_spec("chgnet") is None:
        print("\nCHGNet part skipped: chgnet is not installed "
              "(pip install torch==2.13.0 chgnet)")
        return
    print("\nCHGNet: starting a broker and a chgnet worker ...", flush=True)
    report_chgnet(measure_chgnet(runs))


# ------------------------------------------------------------ command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated: small (64 atoms), large, chgnet")
    parser.add_argument("--repetitions", type=int, default=9,
                        help="turns each system takes, per cell size")
    parser.add_argument("--small-calls", type=int, default=1500,
                        help="calls per repetition for 64 atoms")
    parser.add_argument("--large-atoms", type=int, default=100_000,
                        help="atoms in the large cell")
    parser.add_argument("--large-calls", type=int, default=40,
                        help="calls per repetition for the large cell")
    parser.add_argument("--chgnet-runs", type=int, default=3,
                        help="fresh processes per side for the CHGNet part")
    parser.add_argument("--socketio-client", nargs=2, metavar=("SOCKET", "ATOMS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.socketio_client:
        run_socketio_client(args.socketio_client[0], int(args.socketio_client[1]))
        return
    sizes = {"small": (64, args.small_calls), "large": (args.large_atoms, args.large_calls)}
    for part in args.parts:
        if part == "chgnet":
            chgnet_part(args.chgnet_runs)
            continue
        count, calls = sizes[part]
        print(f"\n{count:,} atoms: starting broker, worker and socket client ...", flush=True)
        report_overhead(count, calls, measure(count, calls, args.repetitions))


if __name__ == "__main__":
    main()
