"""A worker built on majortomo's own ``WorkerRequestsIterator``, for interop tests.

Run: python majortomo_worker.py ENDPOINT SERVICE [HEARTBEAT_INTERVAL]

What it answers depends on the first request frame, so one process covers every case:
  stream N     -> N PARTIALs [b"part", b"<i>"], then a FINAL [b"done"]
  sleep S      -> sleeps S seconds without heartbeating (as majortomo does), FINAL [b"slept"]
  anything     -> FINAL [b"majortomo", *request]
It leaves cleanly (DISCONNECT) on SIGTERM, and ends when the broker sends DISCONNECT.
"""

from __future__ import annotations

import sys
import time

from majortomo import Worker, WorkerRequestsIterator


def answer(requests: WorkerRequestsIterator, request: list) -> None:
    head = request[0] if request else b""
    if head == b"stream":
        parts = [[b"part", str(i).encode()] for i in range(int(request[1]))]
        requests.send_reply_from_iterable(parts, final=[b"done"])
    elif head == b"sleep":
        time.sleep(float(request[1]))
        requests.send_reply_final([b"slept"])
    else:
        requests.send_reply_final([b"majortomo", *request])


def main() -> None:
    endpoint, service = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 2.5
    worker = Worker(endpoint, service, heartbeat_interval=interval,
                    heartbeat_timeout=interval * 4)
    requests = WorkerRequestsIterator(worker)
    requests.stop_on_signal()
    for request in requests:
        answer(requests, request)


if __name__ == "__main__":
    main()
