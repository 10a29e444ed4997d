"""Two workers of a torch model on one machine: with their own default thread pools, and
with the cores shared out between them (what ``serve-broker --autostart`` now does with
``--max-workers-per-model 2``), side by side in one run.

Each set-up is a broker and two ``mlipx serve chgnet`` workers, the second with
``OMP_NUM_THREADS`` (and MKL's, OpenBLAS's) at the machine's cores / 2; ``evaluate`` sends
the same structures through each, the set-ups taking turns. Needs chgnet (``pip install
torch==2.13.0 chgnet``); says so and stops where it is missing.

    python bench/worker_threads.py                  # about 1-2 minutes on 2 cores
    python bench/worker_threads.py --structures 80 --repetitions 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from throughput import CLI, Process, cells, wait_for, wait_for_broker

from mlipx_serve import evaluate
from mlipx_serve.broker.local_launcher import THREAD_VARIABLES, thread_share


def start(stack: ExitStack, label: str, threads: int | None) -> str:
    directory = Path(tempfile.mkdtemp(prefix="mlipx-threads-"))
    stack.callback(shutil.rmtree, directory, True)
    endpoint = f"ipc://{directory}/b.ipc"
    broker = Process(f"broker-{label}", [*CLI, "serve-broker", "--path", endpoint], directory)
    stack.callback(broker.stop)
    wait_for_broker(endpoint, broker)
    env = {} if threads is None else {name: str(threads) for name in THREAD_VARIABLES}
    workers = [Process(f"chgnet-{label}-{i}", [*CLI, "serve", "chgnet", "--broker",
                                                f"ipc://{directory}/b-workers.ipc", "--no-uv",
                                                "--timeout", "0"], directory, env)
               for i in range(2)]
    for worker in workers:
        stack.callback(worker.stop)
    wait_for(endpoint, "chgnet", 2, workers)
    return endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=40)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    if importlib.util.find_spec("chgnet") is None:
        sys.exit("chgnet is not installed: pip install torch==2.13.0 chgnet")
    already = [name for name in THREAD_VARIABLES if name in os.environ]
    if already:
        sys.exit(f"unset {', '.join(already)}: the comparison needs torch's default pools")
    share = thread_share(2)
    structures = cells(args.structures)
    with ExitStack() as stack:
        setups = {"default thread pools": start(stack, "default", None),
                  f"{share} thread(s) each": start(stack, "shared", share)}
        for endpoint in setups.values():  # warm-up: the workers' first calls
            evaluate("chgnet", structures[:4], broker=endpoint, progress=False)
        rates: dict[str, list[float]] = {label: [] for label in setups}
        for repetition in range(args.repetitions):
            for label, endpoint in setups.items():
                begin = time.perf_counter()
                evaluate("chgnet", structures, broker=endpoint, progress=False, max_in_flight=8)
                rates[label].append(len(structures) / (time.perf_counter() - begin))
            print(f"  repetition {repetition + 1}/{args.repetitions}: " + ", ".join(
                f"{values[-1]:.2f}" for values in rates.values()) + " structures/s", flush=True)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    print(f"\nchgnet, 2 workers on {os.cpu_count()} cores, {args.structures} Cu cells of 32 "
          f"atoms, structures/s (median of {args.repetitions})")
    for label, rate in medians.items():
        print(f"  {label:<24} {rate:8.2f}")
    default, shared = medians.values()
    print(f"  shared / default: {shared / default:.2f}x")


if __name__ == "__main__":
    main()
