"""Requests per second through three brokers, side by side, in one run.

(a) our broker (``mdp.broker.Broker``), (b) majortomo's broker, and (c) a bare libzmq
ROUTER/DEALER device (``zmq.proxy``): no MDP logic at all, so it shows the limit of one
hop; (a') ours with its Prometheus endpoint on and scraped every 5 s; with ``--baseline
REV``, also (d) our broker as it was at git revision REV, for a before and after.
Client, broker and workers run in separate processes. (a) and (b) get
the very same client and workers, speaking majortomo's dialect of MDP/0.2 with frames built by
``mdp.protocol``; (c) gets the same client and plain echo loops.

Client and workers are lean pyzmq loops, so that as much of the machine as possible is
left to the brokers: the client keeps its requests in flight on one DEALER socket
(``--client-sockets 32`` gives each request its own connection, as MDP has it), and the
echo workers (one DEALER socket each) share one process. All systems stay up for the whole
run and their measured windows alternate. The parent process only watches: around each
window it reads the client's reply counter and the CPU time (utime+stime) of the broker
process, of its main thread, of the client and of the workers from /proc.

A second test sends 10 MB requests one at a time. A broker that copies the payload pays
milliseconds of CPU per request for it and its peak RSS (VmHWM) grows by the copies; the
main-thread column shows what the Python loop itself spends, apart from libzmq's I/O
thread, which must read and write every byte in any case.

    python bench/broker_throughput.py                # about 2-3 minutes
    python bench/broker_throughput.py --duration 1 --repetitions 3 --workers 2
    python bench/broker_throughput.py --baseline HEAD~3 --systems ours baseline --big-mb 0
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdp import protocol as p  # noqa: E402
from mdp.frames import recv_frames, send_frames  # noqa: E402

SERVICE = b"echo"
DIALECT = p.Dialect.MAJORTOMO
HEARTBEAT = 1.0  # seconds between a worker's heartbeats; both brokers expire after more
CLK_TCK = os.sysconf("SC_CLK_TCK")
FORK = mp.get_context("fork")  # the parent never opens a zmq context, so forking is safe
BIG_THRESHOLD = 64 * 1024  # payloads from this size on are sent without copies


# ------------------------------------------------------------ sockets


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    return sock


# ------------------------------------------------------------ broker processes


def ours_broker(endpoint: str) -> None:
    from mdp.broker import Broker

    Broker(endpoint).run()


def ours_with_metrics_broker(endpoint: str) -> None:
    """Ours with its Prometheus endpoint on (timings kept), scraped every 5 s meanwhile as
    Prometheus would."""
    import socket
    import urllib.request

    from mdp.broker import Broker
    from mdp.metrics import serve_metrics

    broker = Broker(endpoint)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_metrics(broker, str(port))

    def scrape() -> None:
        while True:
            time.sleep(5)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()

    threading.Thread(target=scrape, daemon=True).start()
    broker.run()


def baseline_broker(tree: str, endpoint: str) -> None:
    """Our broker from another revision's tree (``extract_revision``): this forked
    process forgets the ``mdp`` it has and imports that one."""
    for name in [name for name in sys.modules if name == "mdp" or name.startswith("mdp.")]:
        del sys.modules[name]
    sys.path.insert(0, tree)
    from mdp.broker import Broker

    Broker(endpoint).run()


def extract_revision(revision: str, into: str) -> str:
    """``mdp/`` as it was at git ``revision``, written under ``into``; the tree's path."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", revision, "mdp"],
                             check=True, capture_output=True).stdout
    tree = os.path.join(into, "baseline")
    os.makedirs(tree)
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def majortomo_broker(endpoint: str) -> None:
    from majortomo.broker import Broker

    Broker(endpoint).run()


def proxy_device(front: str, back: str) -> None:
    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    frontend.bind(front)
    backend = ctx.socket(zmq.DEALER)
    backend.bind(back)
    zmq.proxy(frontend, backend)


# ------------------------------------------------------------ worker processes


def mdp_echo_workers(endpoint: str, count: int) -> None:
    """``count`` MDP workers in one thread, each answering a request with its own body."""
    sockets = [dealer(zmq.Context.instance(), endpoint) for _ in range(count)]
    for sock in sockets:
        send_frames(sock, p.worker_ready(DIALECT, SERVICE))
    serve(sockets, _answer, p.worker_heartbeat(DIALECT))


def _answer(sock: zmq.Socket, frames: list) -> None:
    message = p.parse_worker_message(DIALECT, frames)
    if type(message) is p.WorkerRequest:
        send_frames(sock, p.worker_reply(DIALECT, message.address, message.body, True))


def plain_echo_workers(endpoint: str, count: int) -> None:
    """What sits behind the device: send every message straight back, envelope and all."""
    serve([dealer(zmq.Context.instance(), endpoint) for _ in range(count)], send_frames)


def serve(sockets: list, answer: Callable[[zmq.Socket, list], None],
          heartbeat: list | None = None) -> None:
    """Answer whatever comes on any of ``sockets``; send ``heartbeat`` on each every second.

    One process serving several worker sockets wakes up once for all the requests that
    have arrived, where one process per worker would wake up (and cost) once per request.
    """
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    next_beat = time.monotonic() + HEARTBEAT
    while True:
        for sock, _ in poller.poll(HEARTBEAT * 1000):
            answer(sock, recv_frames(sock, copy=False))
        if heartbeat and time.monotonic() >= next_beat:
            for sock in sockets:
                send_frames(sock, heartbeat)
            next_beat = time.monotonic() + HEARTBEAT


# ------------------------------------------------------------ the load generator


def load(endpoint: str, size: int, in_flight: int, sockets: int, done, stop) -> None:
    """Keep ``in_flight`` requests going, spread over DEALER sockets; count replies in ``done``.

    Each reply is answered with a new request on the same socket. With one socket per
    request each connection has one request outstanding, as MDP wants; fewer sockets
    make the client cheaper (one poll entry each), which leaves the CPU to the brokers.
    """
    ctx = zmq.Context()
    payload = zmq.Frame(b"x" * size) if size >= BIG_THRESHOLD else b"x" * size
    request = p.client_request(DIALECT, SERVICE, [payload])
    poller = zmq.Poller()
    pool = [dealer(ctx, endpoint) for _ in range(min(sockets, in_flight))]
    for sock in pool:
        poller.register(sock, zmq.POLLIN)
    for i in range(in_flight):
        send_frames(pool[i % len(pool)], request)
    count = 0
    while not stop.value:
        for sock, _ in poller.poll(100):
            reply = recv_frames(sock, copy=False)
            if len(reply[-1]) != size:
                raise RuntimeError(f"a reply's last frame has {len(reply[-1])} bytes, not {size}")
            send_frames(sock, request)
            count += 1
        done.value = count


# ------------------------------------------------------------ the systems compared


@dataclass
class System:
    name: str
    broker: Callable[..., None]
    workers: Callable[[str, int], None]
    two_endpoints: bool = False


BASELINE = "baseline"  # our broker at --baseline REV

SYSTEMS = [
    System("ours", ours_broker, mdp_echo_workers),
    System("ours+metrics", ours_with_metrics_broker, mdp_echo_workers),
    System("majortomo", majortomo_broker, mdp_echo_workers),
    System("zmq.proxy", proxy_device, plain_echo_workers, two_endpoints=True),
]


class Running:
    """A system's broker and worker processes, ended by their pids on exit."""

    def __init__(self, system: System, workdir: str, workers: int, processes: int):
        front = f"ipc://{workdir}/{system.name}-front"
        back = f"ipc://{workdir}/{system.name}-back" if system.two_endpoints else front
        self.endpoint = front
        broker_args = (front, back) if system.two_endpoints else (front,)
        self.broker = start(system.broker, *broker_args)
        shares = [workers // processes + (i < workers % processes) for i in range(processes)]
        self.workers = [start(system.workers, back, n) for n in shares if n]

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.workers + [self.broker]:
            end(proc)


def start(target: Callable[..., None], *args: object) -> mp.Process:
    proc = FORK.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def end(proc: mp.Process) -> None:
    if proc.is_alive():
        proc.terminate()  # SIGTERM to this pid
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


# ------------------------------------------------------------ /proc readings


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime+stime of a process (all threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------ one measured window


@dataclass
class Sample:
    rate: float  # requests per second
    cpu_us: float  # broker process CPU per request
    main_us: float  # broker main thread CPU per request
    broker_core: float  # broker CPU seconds per second
    client_core: float
    workers_core: float
    rss_growth_mb: float = 0.0


@dataclass
class Reading:
    at: float
    done: int
    cpu: float
    main: float
    client: float
    workers: float

    @classmethod
    def take(cls, running: Running, client: int, done) -> Reading:
        broker = running.broker.pid
        return cls(time.monotonic(), done.value, cpu_seconds(broker),
                   cpu_seconds(broker, broker), cpu_seconds(client),
                   sum(cpu_seconds(w.pid) for w in running.workers))


def measure(running: Running, size: int, in_flight: int, args: argparse.Namespace) -> Sample:
    done, stop = FORK.RawValue("q", 0), FORK.RawValue("b", False)
    client = start(load, running.endpoint, size, in_flight, args.client_sockets, done, stop)
    broker = running.broker.pid
    try:
        hwm = peak_rss_mb(broker)
        wait_for_first_reply(done, client)
        time.sleep(args.warmup)
        before = Reading.take(running, client.pid, done)
        time.sleep(args.duration)
        after = Reading.take(running, client.pid, done)
        growth = peak_rss_mb(broker) - hwm
    finally:
        stop.value = True
        client.join(2)
        end(client)
    return sample(before, after, growth)


def wait_for_first_reply(done, client: mp.Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while done.value == 0:
        if not client.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("no reply came: did a broker or worker fail to start?")
        time.sleep(0.01)


def sample(before: Reading, after: Reading, growth: float) -> Sample:
    seconds = after.at - before.at
    count = max(after.done - before.done, 1)
    return Sample(count / seconds, (after.cpu - before.cpu) / count * 1e6,
                  (after.main - before.main) / count * 1e6,
                  (after.cpu - before.cpu) / seconds, (after.client - before.client) / seconds,
                  (after.workers - before.workers) / seconds, growth)


# ------------------------------------------------------------ the run


@dataclass
class Results:
    samples: dict = field(default_factory=dict)  # (system, test) -> [Sample]

    def add(self, system: str, test: str, value: Sample) -> None:
        self.samples.setdefault((system, test), []).append(value)

    def median(self, system: str, test: str, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples[(system, test)])

    def spread(self, system: str, test: str) -> tuple[float, float]:
        rates = [s.rate for s in self.samples[(system, test)]]
        return min(rates), max(rates)

    def ratio(self, system: str, other: str, test: str, attr: str) -> float:
        """The median over repetitions of system/other, each pair measured seconds apart."""
        pairs = zip(self.samples[(system, test)], self.samples[(other, test)], strict=True)
        return statistics.median(_quotient(getattr(a, attr), getattr(b, attr)) for a, b in pairs)


def _quotient(a: float, b: float) -> float:
    return a / b if b else float("inf")  # CPU time is counted in ticks, so it may read 0


def tests(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(label, payload bytes, requests in flight)."""
    chosen = [(f"{args.size} B x{n}", args.size, n) for n in args.in_flight]
    if args.big_mb:
        chosen.append((f"{args.big_mb:g} MB x1", int(args.big_mb * 1e6), 1))
    return chosen


def run(args: argparse.Namespace, systems: list[System]) -> Results:
    """All systems stay up; their windows alternate, so a change in the machine's load
    between one window and the next hits every system alike."""
    results = Results()
    workdir = tempfile.mkdtemp(prefix="mdp-bench-")
    try:
        with ExitStack() as stack:
            running = {}
            for system in systems:
                up = Running(system, workdir, args.workers, args.worker_processes)
                running[system.name] = stack.enter_context(up)
            for rep in range(args.repetitions):
                run_repetition(rep, running, systems, args, results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def run_repetition(rep: int, running: dict[str, Running], systems: list[System],
                   args: argparse.Namespace, results: Results) -> None:
    for label, size, in_flight in tests(args):
        for system in rotated(systems, rep):
            results.add(system.name, label, measure(running[system.name], size, in_flight, args))
    print(f"  repetition {rep + 1}/{args.repetitions} done", file=sys.stderr, flush=True)


def rotated(systems: list[System], rep: int) -> list[System]:
    """Change who goes first each repetition, so a slow drift of the machine hits all alike."""
    k = rep % len(systems)
    return systems[k:] + systems[:k]


# ------------------------------------------------------------ the report


def report(results: Results, args: argparse.Namespace, systems: list[System]) -> None:
    names = [s.name for s in systems]
    print(f"\nmedians of {args.repetitions} windows of {args.duration:g} s; "
          f"{args.workers} echo workers in {args.worker_processes} process(es); "
          f"{os.cpu_count()} cores; pyzmq {zmq.__version__}, "
          f"libzmq {zmq.zmq_version()}")
    print(f"{'test':<14}{'broker':<11}{'req/s':>9}{'min-max':>15}{'broker CPU/req':>16}"
          f"{'main thread':>13}{'broker':>8}{'client':>8}{'workers':>8}")
    print(f"{'':<14}{'':<11}{'':>9}{'':>15}{'(process)':>16}{'':>13}{'cores':>8}{'cores':>8}"
          f"{'cores':>8}")
    for label, size, _ in tests(args):
        for name in names:
            print(row(results, name, label, size >= BIG_THRESHOLD))
    print_ratios(results, names, args)
    print_big(results, names, args)


def row(results: Results, name: str, label: str, big: bool) -> str:
    m = lambda attr: results.median(name, label, attr)  # noqa: E731
    low, high = results.spread(name, label)
    rate = f"{m('rate'):>9.0f}" if not big else f"{m('rate'):>9.1f}"
    spread = f"{low:.0f}-{high:.0f}" if not big else f"{low:.1f}-{high:.1f}"
    return (f"{label:<14}{name:<11}{rate}{spread:>15}{us(m('cpu_us')):>16}"
            f"{us(m('main_us')):>13}{m('broker_core'):>8.2f}{m('client_core'):>8.2f}"
            f"{m('workers_core'):>8.2f}")


def us(value: float) -> str:
    return f"{value:.0f} us" if value < 10_000 else f"{value / 1000:.1f} ms"


def print_ratios(results: Results, names: list[str], args: argparse.Namespace) -> None:
    if "ours" not in names:
        return
    print("\nratios ours/other, median of the repetitions' ratios "
          "(req/s: higher is better; CPU/request: lower is better)")
    for label, _, _ in tests(args):
        for other in (n for n in names if n != "ours"):
            rate = results.ratio("ours", other, label, "rate")
            cpu = results.ratio("ours", other, label, "cpu_us")
            print(f"  {label:<14} vs {other:<10} req/s x{rate:.2f}   broker CPU/req x{cpu:.2f}")
    print_targets(results, names, args)


def print_targets(results: Results, names: list[str], args: argparse.Namespace) -> None:
    label = f"{args.size} B x32"
    if "majortomo" not in names or 32 not in args.in_flight:
        return
    rate = results.ratio("ours", "majortomo", label, "rate")
    cpu = results.ratio("ours", "majortomo", label, "cpu_us")
    print(f"  targets at 32 in flight: req/s >= 1.5x majortomo's: x{rate:.2f} "
          f"{'met' if rate >= 1.5 else 'MISSED'}; broker CPU/req <= 0.6x: x{cpu:.2f} "
          f"{'met' if cpu <= 0.6 else 'MISSED'}")


def print_big(results: Results, names: list[str], args: argparse.Namespace) -> None:
    if not args.big_mb:
        return
    big, tiny = tests(args)[-1][0], tests(args)[0][0]
    print(f"\n{big}: broker CPU per request, {big} vs {tiny}, and the growth of the broker's "
          f"peak RSS (VmHWM) over all its {big} windows")
    print(f"{'broker':<11}{'round trip':>12}{'process CPU/req':>24}{'main thread CPU/req':>24}"
          f"{'VmHWM':>10}")
    for name in names:
        m = functools.partial(results.median, name)
        growth = sum(s.rss_growth_mb for s in results.samples[(name, big)])
        print(f"{name:<11}{1000 / m(big, 'rate'):>9.1f} ms"
              f"{us(m(big, 'cpu_us')):>13} vs {us(m(tiny, 'cpu_us')):>7}"
              f"{us(m(big, 'main_us')):>13} vs {us(m(tiny, 'main_us')):>7}"
              f"{growth:>+7.0f} MB")


# ------------------------------------------------------------ command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds before a window")
    parser.add_argument("--repetitions", type=int, default=7, help="windows per figure")
    parser.add_argument("--workers", type=int, default=4, help="echo workers (sockets)")
    parser.add_argument("--worker-processes", type=int, default=1,
                        help="processes the echo workers are spread over")
    parser.add_argument("--size", type=int, default=16, help="tiny payload, bytes")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 32],
                        help="requests in flight")
    parser.add_argument("--client-sockets", type=int, default=1,
                        help="DEALER sockets the requests in flight are spread over")
    parser.add_argument("--big-mb", type=float, default=10.0,
                        help="large payload in MB, sent one at a time (0: skip)")
    parser.add_argument("--systems", nargs="+", default=None,
                        choices=[s.name for s in SYSTEMS] + [BASELINE],
                        help="default: all, the baseline too when --baseline is given")
    parser.add_argument("--baseline", metavar="REV",
                        help=f"also run our broker as it was at git revision REV "
                             f"(system '{BASELINE}')")
    args = parser.parse_args(argv)
    if args.systems is None:
        args.systems = [s.name for s in SYSTEMS] + ([BASELINE] if args.baseline else [])
    if BASELINE in args.systems and not args.baseline:
        parser.error(f"system '{BASELINE}' needs --baseline REV")
    return args


def main(argv: list[str] | None = None) -> Results:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mdp-baseline-") as scratch:
        known = SYSTEMS
        if args.baseline:
            tree = extract_revision(args.baseline, scratch)
            known = [*SYSTEMS, System(BASELINE, functools.partial(baseline_broker, tree),
                                      mdp_echo_workers)]
            print(f"baseline: our broker at {args.baseline}", file=sys.stderr)
        systems = [s for s in known if s.name in args.systems]
        results = run(args, systems)
    report(results, args, systems)
    return results


if __name__ == "__main__":
    main()
