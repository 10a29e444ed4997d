"""Sharing one model between scripts: single calls beside a map, and two maps together.

One autostart broker per system, serving the built-in ``emt`` with one worker (the
defaults), and each script a process of its own, as users run them:

- **B**, a relaxation's calls: one structure a call through ``RemoteCalculator``
  (energy and forces of a 32-atom Cu cell moved a little each time); per call, median
  and p95, alone and while A maps;
- **A**, a map: ``evaluate`` of ``--structures`` Cu cells of 32 atoms with its defaults
  (32 requests in flight); its wall time alone, and with B calling all along beside it;
- **two maps** started together, with ``max_in_flight`` 128 and 4: how much longer the
  one that finishes last took than the other.

Systems: ``now`` (this checkout) and, with ``--baseline REV``, ``baseline``: the project
as it was at git revision REV, run from a copy of its tree put first on PYTHONPATH. The
systems take turns within each repetition; figures are medians over repetitions (B's
per-call figures: medians of each repetition's median and p95). With a baseline, also
broker requests per second at 32 in flight, ``now`` against ``baseline``
(``bench/broker_throughput.py``'s measurement).

Part ``chgnet`` (needs ``pip install torch==2.13.0 chgnet``; says so and skips without):
a relaxation's step (BFGS on a rattled 4-atom Cu cell, one call a step) through a worker
that batches as the built-in ``chgnet`` does (16, 10 ms), through one with batch size 1,
and with CHGNet in this process, the three taking turns; and a map of 128 cells through
each worker, to show that the batching one keeps its batches.

    python bench/fairness.py                              # about 5 minutes
    python bench/fairness.py --baseline HEAD~5 --repetitions 5 --parts sharing
    python bench/fairness.py --parts chgnet
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOW, BASELINE = "now", "baseline"
MODEL = "emt"
START_TIMEOUT = 120.0
RUN_TIMEOUT = 1800.0


# ------------------------------------------------------------ the scripts (roles)


def cell(seed: int, repeat: int = 2):
    """A Cu cell of 4 * repeat**3 atoms, rattled."""
    from ase.build import bulk

    atoms = bulk("Cu", cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def wait_for_file(path: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.002)


def role_calls(args: argparse.Namespace) -> None:
    """B: single calls, ``--calls`` of them, or from ``--go`` until ``--until`` appears."""
    import numpy as np

    from mlipx_serve import RemoteCalculator

    rng = np.random.default_rng(1)
    atoms = cell(0)
    latencies = []
    with RemoteCalculator(MODEL, args.broker) as calc:
        atoms.calc = calc
        atoms.get_forces()  # a first call: connections made, the worker warm
        if args.go:
            Path(args.ready).touch()
            wait_for_file(Path(args.go))
        while len(latencies) < args.calls if not args.until else not Path(args.until).exists():
            atoms.positions += rng.normal(0.0, 0.001, atoms.positions.shape)
            start = time.perf_counter()
            atoms.get_potential_energy()
            atoms.get_forces()  # (one request: both come together)
            latencies.append(time.perf_counter() - start)
    Path(args.out).write_text(json.dumps({"latencies": latencies}))


def role_map(args: argparse.Namespace) -> None:
    """A: ``evaluate`` of ``--structures`` cells; its wall time from ``--go``."""
    from mlipx_serve import evaluate

    structures = [cell(seed) for seed in range(args.structures)]
    evaluate(MODEL, structures[:1], broker=args.broker, progress=False)  # imports, connection
    Path(args.ready).touch()
    wait_for_file(Path(args.go))
    start = time.perf_counter()
    results = evaluate(MODEL, structures, broker=args.broker, progress=False,
                       max_in_flight=args.in_flight)
    seconds = time.perf_counter() - start
    if args.until:
        Path(args.until).touch()
    assert len(results) == len(structures)
    Path(args.out).write_text(json.dumps({"seconds": seconds}))


# ------------------------------------------------------------ processes


class System:
    """A broker (autostart, the built-in emt) of this checkout or of a baseline tree, and
    how to run the scripts against it; everything it starts is ended by its pid."""

    def __init__(self, name: str, directory: Path, tree: Path | None, broker: bool = True):
        self.name = name
        self.directory = directory / name
        self.directory.mkdir()
        self.endpoint = f"ipc://{self.directory}/broker.ipc"
        self.env = dict(os.environ)
        if tree is not None:
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.runs = 0
        self.processes: list[subprocess.Popen] = []
        if broker:
            self.start(["-m", "mlipx_serve.cli", "serve-broker", "--autostart",
                        "--path", self.endpoint], "broker")

    def start(self, arguments: list[str], label: str) -> subprocess.Popen:
        log = open(self.directory / f"{label}.log", "ab")  # noqa: SIM115 (kept by Popen)
        process = subprocess.Popen([sys.executable, *arguments], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=self.env, cwd=self.directory)
        self.processes.append(process)
        return process

    def script(self, role: str, label: str, **options: object) -> tuple[subprocess.Popen, Path]:
        self.runs += 1
        out = self.directory / f"{label}-{self.runs}.json"
        arguments = [str(Path(__file__).resolve()), "--role", role, "--broker", self.endpoint,
                     "--out", str(out)]
        for key, value in options.items():
            arguments += [f"--{key.replace('_', '-')}", str(value)]
        return self.start(arguments, label), out

    def marker(self, label: str) -> Path:
        self.runs += 1
        return self.directory / f"{label}-{self.runs}"

    def close(self) -> None:
        from mlipx_serve.processes import end_processes

        end_processes(self.processes[::-1], 15)  # (a broker ends the workers it started)


def finish(*started: tuple[subprocess.Popen, Path]) -> list[dict]:
    found = []
    for process, out in started:
        if process.wait(RUN_TIMEOUT) != 0:
            sys.exit(f"a script failed (exit {process.returncode}); see {process.args}")
        found.append(json.loads(out.read_text()))
    return found


def together(system: System, scripts: list[tuple[str, str, dict]]) -> list[dict]:
    """Start the scripts, let them get ready (imports, first call), start them at once."""
    go = system.marker("go")
    started, ready = [], []
    for role, label, options in scripts:
        ready.append(system.marker(f"{label}-ready"))
        started.append(system.script(role, label, go=go, ready=ready[-1], **options))
    for path, (process, _) in zip(ready, started, strict=True):
        while not path.exists():
            if process.poll() is not None:
                sys.exit(f"{label} exited before it was ready (exit {process.returncode})")
            time.sleep(0.01)
    go.touch()
    return finish(*started)


# ------------------------------------------------------------ one repetition


def b_alone(system: System, args: argparse.Namespace) -> list[float]:
    [found] = finish(system.script("calls", "b-alone", calls=args.calls))
    return found["latencies"]


def a_alone(system: System, args: argparse.Namespace) -> float:
    [found] = together(system, [("map", "a-alone", {"structures": args.structures,
                                                     "in_flight": 32})])
    return found["seconds"]


def a_with_b(system: System, args: argparse.Namespace) -> tuple[float, list[float]]:
    done = system.marker("a-done")
    a, b = together(system, [("map", "a", {"structures": args.structures, "in_flight": 32,
                                           "until": done}),
                             ("calls", "b", {"until": done})])
    return a["seconds"], b["latencies"]


def two_maps(system: System, args: argparse.Namespace) -> tuple[float, float]:
    big, small = together(system, [("map", "map-128", {"structures": args.structures,
                                                       "in_flight": 128}),
                                   ("map", "map-4", {"structures": args.structures,
                                                     "in_flight": 4})])
    return big["seconds"], small["seconds"]


def repetition(system: System, args: argparse.Namespace) -> dict[str, float]:
    alone = b_alone(system, args)
    a_seconds = a_alone(system, args)
    a_beside, during = a_with_b(system, args)
    big, small = two_maps(system, args)
    return {"b_alone_median": statistics.median(alone), "b_alone_p95": p95(alone),
            "b_during_median": statistics.median(during), "b_during_p95": p95(during),
            "b_during_calls": len(during),
            "a_alone": a_seconds, "a_with_b": a_beside,
            "map_128": big, "map_4": small}


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def warm_up(system: System, args: argparse.Namespace) -> None:
    """The worker started (autostart) and every import done once, before any figure."""
    finish(system.script("calls", "warm-up", calls=3))


# ------------------------------------------------------------ the report


def report(figures: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    med = {name: {key: statistics.median(rep[key] for rep in reps) for key in reps[0]}
           for name, reps in figures.items()}
    print(f"\n{args.structures} structures a map, {args.calls} calls for B alone, "
          f"{args.repetitions} repetitions, {os.cpu_count()} cores; medians")
    print(f"{'':<10}{'B alone':>18}{'B while A maps':>22}{'A alone':>10}{'A with B':>10}"
          f"{'maps 128|4 in flight':>24}")
    print(f"{'':<10}{'median   p95':>18}{'median     p95':>22}{'s':>10}{'s':>10}"
          f"{'s':>24}")
    for name, m in med.items():
        print(f"{name:<10}{ms(m['b_alone_median']):>9}{ms(m['b_alone_p95']):>9}"
              f"{ms(m['b_during_median']):>11}{ms(m['b_during_p95']):>11}"
              f"{m['a_alone']:>10.2f}{m['a_with_b']:>10.2f}"
              f"{m['map_128']:>12.2f}{m['map_4']:>12.2f}")
    print("\nratios (targets in brackets), medians over repetitions of each repetition's ratio")
    for name, reps in figures.items():
        slower = statistics.median(max(r["map_128"], r["map_4"]) / min(r["map_128"], r["map_4"])
                                   for r in reps)
        calls = statistics.median(rep["b_during_calls"] for rep in reps)
        print(f"  {name}: B while A maps / B alone: "
              f"median x{ratio(reps, 'b_during_median', 'b_alone_median'):.1f} (<= 5), "
              f"p95 x{ratio(reps, 'b_during_p95', 'b_alone_p95'):.1f} (<= 10), "
              f"{calls:.0f} calls of B while A mapped")
        print(f"  {name}: A with B / A alone x{ratio(reps, 'a_with_b', 'a_alone'):.2f} (<= 1.1); "
              f"two maps, last / first to finish x{slower:.2f} (<= 1.2)")


def ratio(reps: list[dict[str, float]], top: str, bottom: str) -> float:
    return statistics.median(rep[top] / rep[bottom] for rep in reps)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def broker_throughput(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    import broker_throughput as bench

    print("\nbroker requests/s at 32 in flight, now against baseline "
          "(bench/broker_throughput.py)", flush=True)
    bench.main(["--baseline", args.baseline, "--systems", "ours", bench.BASELINE,
                "--big-mb", "0", "--in-flight", "32", "--repetitions", "9"])


# ------------------------------------------------------------ part chgnet


def chgnet_part(directory: Path, args: argparse.Namespace) -> None:
    import importlib.util

    if importlib.util.find_spec("chgnet") is None:
        print("\npart chgnet skipped: chgnet is not installed (pip install torch==2.13.0 "
              "chgnet)")
        return
    from chgnet.model import CHGNetCalculator

    from mlipx_serve import RemoteCalculator

    setups = {"batch 16 (built-in)": [], "batch 1": ["--batch-size", "1"]}
    system = System("chgnet", directory, None, broker=False)
    endpoints = {}
    for number, (label, options) in enumerate(setups.items()):
        endpoints[label] = f"ipc://{system.directory}/chgnet-{number}.ipc"
        system.start(["-m", "mlipx_serve.cli", "serve-broker", "--path", endpoints[label]],
                     f"chgnet-broker-{number}")
        system.start(["-m", "mlipx_serve.cli", "serve", "chgnet", "--no-uv", "--timeout", "0",
                      "--broker", endpoints[label].replace(".ipc", "-workers.ipc"),
                      *options], f"chgnet-worker-{number}")
    try:
        calculators = {label: RemoteCalculator("chgnet", endpoint, timeout=300)
                       for label, endpoint in endpoints.items()}
        calculators["local"] = CHGNetCalculator()
        steps = {label: [] for label in calculators}
        maps = {label: [] for label in endpoints}
        for calc in calculators.values():  # warm: workers loaded, first calls made
            relax_steps(calc, 3)
        for rep in range(args.repetitions):
            for label, calc in calculators.items():
                steps[label].append(statistics.median(relax_steps(calc, args.steps)))
            for label, endpoint in endpoints.items():
                maps[label].append(map_rate(endpoint))
            print(f"  chgnet, repetition {rep + 1}: " + ", ".join(
                f"{label} {values[-1] * 1000:.1f} ms" for label, values in steps.items()),
                flush=True)
    finally:
        system.close()
    report_chgnet(steps, maps, args)


def relax_steps(calc, count: int) -> list[float]:
    """Seconds each step of a BFGS relaxation took (a step: one call of the model)."""
    from ase.optimize import BFGS

    atoms = cell(7, repeat=1)
    atoms.calc = calc
    optimizer = BFGS(atoms, logfile=None)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def map_rate(endpoint: str, count: int = 128) -> float:
    from mlipx_serve import evaluate

    structures = [cell(seed) for seed in range(count)]
    start = time.perf_counter()
    evaluate("chgnet", structures, broker=endpoint, progress=False, timeout=300)
    return count / (time.perf_counter() - start)


def report_chgnet(steps: dict[str, list[float]], maps: dict[str, list[float]],
                  args: argparse.Namespace) -> None:
    print(f"\nCHGNet: {args.repetitions} repetitions of {args.steps} BFGS steps of a 4-atom "
          f"Cu cell, medians of each repetition's median step; maps of 128 32-atom cells")
    for label, values in steps.items():
        rate = f"   map {statistics.median(maps[label]):6.1f} structures/s" \
            if label in maps else ""
        print(f"  {label:<22} step {statistics.median(values) * 1000:7.1f} ms{rate}")
    builtin, single = (statistics.median(steps[label]) for label in maps)
    print(f"  step, batch 16 / batch 1: x{builtin / single:.2f} (<= 1.1); batch 1 / local: "
          f"x{single / statistics.median(steps['local']):.2f}")
    builtin_map, single_map = (statistics.median(values) for values in maps.values())
    print(f"  map, batch 16 / batch 1: x{builtin_map / single_map:.2f} structures/s")


def extract_tree(revision: str, into: Path) -> Path:
    """The project's packages as they were at git ``revision``, under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "mdp",
                              "mlipx_serve"], check=True, capture_output=True).stdout
    tree = into / "baseline-tree"
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", type=int, default=3000, help="structures a map")
    parser.add_argument("--calls", type=int, default=200, help="B's calls when alone")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the project as it was at git revision REV")
    parser.add_argument("--parts", nargs="+", choices=["sharing", "chgnet"],
                        default=["sharing", "chgnet"])
    parser.add_argument("--steps", type=int, default=30, help="BFGS steps a repetition")
    parser.add_argument("--role", choices=["calls", "map"], help=argparse.SUPPRESS)
    for name in ("broker", "out", "go", "ready", "until"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--in-flight", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        (role_calls if args.role == "calls" else role_map)(args)
        return
    with ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="mlipx-fair-"))
        stack.callback(shutil.rmtree, directory, True)
        if "sharing" in args.parts:
            sharing_part(directory, args)
        if "chgnet" in args.parts:
            chgnet_part(directory, args)


def sharing_part(directory: Path, args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        systems = [System(NOW, directory, None)]
        stack.callback(systems[0].close)
        if args.baseline:
            systems.append(System(BASELINE, directory, extract_tree(args.baseline, directory)))
            stack.callback(systems[1].close)
        for system in systems:
            warm_up(system, args)
        figures: dict[str, list[dict[str, float]]] = {system.name: [] for system in systems}
        for rep in range(args.repetitions):
            for system in systems[rep % len(systems):] + systems[:rep % len(systems)]:
                figures[system.name].append(repetition(system, args))
                print(f"  {system.name}, repetition {rep + 1}: " + ", ".join(
                    f"{key} {value:.4g}" for key, value in figures[system.name][-1].items()),
                    flush=True)
    report(figures, args)
    if args.baseline:
        broker_throughput(args)


if __name__ == "__main__":
    main()
