"""An MDP/0.1 client written from RFC 7 the way the zguide's reference client (mdcliapi)
is: a REQ socket, and an assertion that every reply names the service it asked for (the
reference client aborts when it does not).

Run: python rfc7_client.py ENDPOINT TIMEOUT SERVICE [BODY...] [-- SERVICE [BODY...]]...

Sends the requests one after another and prints each reply as a JSON line
{"service": ..., "body": [...]} (frames as text, or hex when they are not UTF-8).
"""

from __future__ import annotations

import json
import sys

import zmq

CLIENT = b"MDPC01"


def request(sock: zmq.Socket, timeout: float, service: bytes, body: list[bytes]) -> list:
    sock.send_multipart([CLIENT, service, *body])  # REQ adds the empty delimiter
    if not sock.poll(timeout * 1000):
        raise SystemExit(f"no reply to {service!r} within {timeout} s")
    frames = sock.recv_multipart()
    assert len(frames) >= 2, frames
    header, reply_service, reply = frames[0], frames[1], frames[2:]
    assert header == CLIENT, frames
    assert reply_service == service, f"asked {service!r}, the reply names {reply_service!r}"
    return reply


def show(frame: bytes) -> str | dict:
    try:
        return frame.decode()
    except UnicodeDecodeError:
        return {"hex": frame.hex()}


def main(endpoint: str, timeout: str, *words: str) -> None:
    requests, current = [], []
    for word in [*words, "--"]:
        if word == "--":
            requests.append(current)
            current = []
        else:
            current.append(word.encode())
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for service, *body in requests:
        reply = request(sock, float(timeout), service, body)
        print(json.dumps({"service": service.decode(), "body": [show(f) for f in reply]}),
              flush=True)
    sock.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
