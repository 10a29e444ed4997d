"""An MDP/0.1 worker written from RFC 7 the way the zguide's reference worker (mdwrkapi)
is: one thread and one DEALER socket, heartbeats only between requests, so it is silent
for as long as its handler runs.

Run: python rfc7_worker.py ENDPOINT SERVICE LOG

    take TAG SECONDS -> appends "TAG pid" to LOG; the first worker to take TAG sleeps
                        SECONDS (as LOG shows), any later one does not; then [pid, TAG]
    anything else    -> [pid, *request]
"""

from __future__ import annotations

import os
import sys
import time

import zmq

WORKER = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = (bytes([n]) for n in range(1, 6))
HEARTBEAT_INTERVAL = 2.5  # the reference worker's defaults
LIVENESS = 3
RECONNECT = 2.5
PID = str(os.getpid()).encode()


def handle(log: str, body: list[bytes]) -> list[bytes]:
    if body[:1] != [b"take"]:
        return [PID, *body]
    tag, seconds = body[1], float(body[2])
    with open(log, "ab") as file:  # O_APPEND: one short line is written whole
        file.write(tag + b" " + PID + b"\n")
    with open(log, "rb") as file:
        first = [line.split()[1] for line in file if line.split()[0] == tag][0] == PID
    if first:
        time.sleep(seconds)  # no heartbeats meanwhile: that is the point
    return [PID, tag]


def connect(context: zmq.Context, endpoint: str, service: bytes) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([b"", WORKER, READY, service])
    return sock


def main(endpoint: str, service: str, log: str) -> None:
    context = zmq.Context()
    sock = connect(context, endpoint, service.encode())
    liveness = LIVENESS
    heartbeat_at = time.monotonic() + HEARTBEAT_INTERVAL
    while True:
        if sock.poll(HEARTBEAT_INTERVAL * 1000):
            frames = sock.recv_multipart()
            liveness = LIVENESS
            assert frames[0] == b"" and frames[1] == WORKER, frames
            command = frames[2]
            if command == REQUEST:
                client, empty, body = frames[3], frames[4], frames[5:]
                assert empty == b"", frames
                sock.send_multipart([b"", WORKER, REPLY, client, b"", *handle(log, body)])
            elif command == DISCONNECT:
                sock.close()
                sock = connect(context, endpoint, service.encode())
        else:
            liveness -= 1
            if liveness == 0:
                time.sleep(RECONNECT)
                sock.close()
                sock = connect(context, endpoint, service.encode())
                liveness = LIVENESS
        if time.monotonic() > heartbeat_at:
            sock.send_multipart([b"", WORKER, HEARTBEAT])
            heartbeat_at = time.monotonic() + HEARTBEAT_INTERVAL


if __name__ == "__main__":
    main(*sys.argv[1:4])
