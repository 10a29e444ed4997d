"""A worker process for system tests whose handler does what the request's first frame says.

Every reply starts with the worker's pid, so a test can tell which process served it.

    echo ARGS...       -> [pid, ARGS...]
    sleep SECONDS      -> [pid] after sleeping
    mark PATH SECONDS  -> writes the pid to PATH, then [pid]; the first worker to mark
                          PATH sleeps SECONDS before it answers, any later one does not
    work SECONDS TOKEN [LOG] -> appends "TOKEN pid" to LOG (if given), sleeps SECONDS,
                          then [pid, TOKEN]
    exit               -> the process dies at once (os._exit), no reply
    raise MESSAGE      -> the handler raises RuntimeError(MESSAGE)
    stream N           -> N parts, each [pid, index]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator

from mdp.protocol import Dialect
from mdp.worker import Worker

DIALECTS = {"0.2": Dialect.V02, "0.1": Dialect.V01, "majortomo": Dialect.MAJORTOMO}
PID = str(os.getpid()).encode()


def handle(frames: list) -> object:
    command, *args = [bytes(f) for f in frames] or [b"echo"]
    if command == b"echo":
        return [PID, *args]
    if command == b"sleep":
        time.sleep(float(args[0]))
        return [PID]
    if command == b"mark":
        return mark(args[0].decode(), float(args[1]))
    if command == b"work":
        return work(float(args[0]), args[1], args[2].decode() if len(args) > 2 else None)
    if command == b"exit":
        os._exit(3)
    if command == b"raise":
        raise RuntimeError(args[0].decode() if args else "boom")
    if command == b"stream":
        return stream(int(args[0]))
    raise ValueError(f"unknown command {command!r}")


def mark(path: str, seconds: float) -> list:
    """Tell the test (through a file) that this process has the request in hand.

    Only the first taker is slow, so the test has time to act on it (kill it, signal it),
    while a retry on another worker answers at once.
    """
    first = not os.path.exists(path)
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "wb") as file:
        file.write(PID)
    os.replace(temporary, path)
    if first:
        time.sleep(seconds)
    return [PID]


def work(seconds: float, token: bytes, log: str | None) -> list:
    if log is not None:
        with open(log, "ab") as file:  # O_APPEND: one short line is written whole
            file.write(token + b" " + PID + b"\n")
    time.sleep(seconds)
    return [PID, token]


def stream(count: int) -> Iterator[list]:
    for index in range(count):
        yield [PID, str(index).encode()]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("service")
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--liveness", type=int, default=3)
    parser.add_argument("--idle-timeout", type=float, default=None)
    parser.add_argument("--dialect", choices=sorted(DIALECTS), default="0.2")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = Worker(args.endpoint, args.service, handle, heartbeat_interval=args.heartbeat,
                    heartbeat_liveness=args.liveness, idle_timeout=args.idle_timeout,
                    dialect=DIALECTS[args.dialect])
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
