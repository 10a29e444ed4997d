"""Regenerate mdp.json, the byte-exact test vectors of the Majordomo wire protocol.

Run from anywhere: ``python protocol/vectors/make_mdp_vectors.py``.

The command vectors are built by the small encoder below, written from the tables of
protocol/mdp.md and not from mdp/protocol.py, so the tests compare two implementations
rather than one with itself. The exchanges (what the broker answers to a sequence of
messages) are recorded by running mdp.core.BrokerCore; each frame it sends is checked here
against the independent encoder before it is written down.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mdp import protocol as p  # noqa: E402
from mdp.core import BrokerConfig, BrokerCore  # noqa: E402
from mdp.errors import BrokerError  # noqa: E402

OUTPUT = Path(__file__).with_name("mdp.json")

V02, V01, MT = "MDP/0.2", "MDP/0.1", "majortomo"
DIALECTS = (V02, V01, MT)
SLUG = {V02: "v02", V01: "v01", MT: "majortomo"}
C2B, B2C = "client-to-broker", "broker-to-client"
W2B, B2W = "worker-to-broker", "broker-to-worker"

LEAD = {V02: [], V01: [b""], MT: [b""]}
CLIENT_HEADER = {V02: b"MDPC02", V01: b"MDPC01", MT: b"MDPC02"}
WORKER_HEADER = {V02: b"MDPW02", V01: b"MDPW01", MT: b"MDPW02"}
CLIENT_COMMANDS = {V02: {"REQUEST": 1, "PARTIAL": 2, "FINAL": 3},
                   V01: {},
                   MT: {"REQUEST": 2, "PARTIAL": 3, "FINAL": 4}}
WORKER_02 = {"READY": 1, "REQUEST": 2, "PARTIAL": 3, "FINAL": 4, "HEARTBEAT": 5,
             "DISCONNECT": 6}
WORKER_COMMANDS = {V02: WORKER_02, MT: WORKER_02,
                   V01: {"READY": 1, "REQUEST": 2, "REPLY": 3, "HEARTBEAT": 4,
                         "DISCONNECT": 5}}
WITH_ADDRESS = {"REQUEST", "PARTIAL", "FINAL", "REPLY"}

ADDRESS = "0000000000000001"
WORKER_ERROR = {"hex": b"\x00mdp.worker-error".hex()}
BROKER_ERROR = {"hex": b"\x00mdp.broker-error".hex()}
TRACEBACK = ('Traceback (most recent call last):\n  File "w.py", line 3, in handle\n'
             'ValueError: bad input\n')
TRACEBACK_FRAME = {"hex": TRACEBACK.encode().hex()}  # not printable: it has line breaks


# ------------------------------------------------------------ frames <-> JSON


def frame_bytes(value: str | dict) -> bytes:
    """A body frame of a meaning: text (UTF-8) or {"hex": ...}."""
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value.encode()


def frame_json(frame: bytes) -> str | dict:
    try:
        text = frame.decode()
    except UnicodeDecodeError:
        return {"hex": frame.hex()}
    return text if text.isprintable() else {"hex": frame.hex()}


# ------------------------------------------------------------ the independent encoder


def encode(dialect: str, direction: str, meaning: dict) -> list[bytes]:
    if direction in (C2B, B2C):
        return _client_frames(dialect, direction, meaning)
    return _worker_frames(dialect, meaning)


def _client_frames(dialect: str, direction: str, meaning: dict) -> list[bytes]:
    frames = LEAD[dialect] + [CLIENT_HEADER[dialect]]
    if dialect != V01:
        frames.append(bytes([CLIENT_COMMANDS[dialect][meaning["command"]]]))
    if direction == C2B or dialect != MT:
        frames.append(meaning["service"].encode())
    return frames + [frame_bytes(f) for f in meaning["body"]]


def _worker_frames(dialect: str, meaning: dict) -> list[bytes]:
    command = meaning["command"]
    frames = LEAD[dialect] + [WORKER_HEADER[dialect], bytes([WORKER_COMMANDS[dialect][command]])]
    if command == "READY":
        frames.append(meaning["service"].encode())
    elif command in WITH_ADDRESS:
        frames += [bytes.fromhex(meaning["address"]), b""]
        frames += [frame_bytes(f) for f in meaning["body"]]
    return frames


def final_name(dialect: str) -> str:
    return "REPLY" if dialect == V01 else "FINAL"


# ------------------------------------------------------------ command vectors


def vector(name: str, dialect: str, direction: str, meaning: dict) -> dict:
    frames = encode(dialect, direction, meaning)
    return {"name": f"{SLUG[dialect]}/{direction}/{name}", "dialect": dialect,
            "direction": direction, "meaning": meaning, "frames": [f.hex() for f in frames]}


REQUESTS: list[tuple[str, str, list]] = [
    ("request", "echo", ["hi"]),
    ("request-empty-body", "echo", []),
    ("request-binary-body", "echo", [{"hex": "00ff"}, "", "two"]),
    ("mmi-service", "mmi.service", ["echo"]),
    ("mmi-service-no-name", "mmi.service", []),
    ("mmi-services", "mmi.services", []),
    ("mmi-status", "mmi.status", []),
    ("mmi-workers", "mmi.workers", []),
    ("mmi-unknown", "mmi.nope", []),
]

REPLIES: list[tuple[str, str, list]] = [
    ("final", "echo", ["hi"]),
    ("final-empty-body", "echo", []),
    ("final-binary-body", "echo", [{"hex": "00ff"}, "", "two"]),
    ("mmi-service-200", "mmi.service", ["200"]),
    ("mmi-service-404", "mmi.service", ["404"]),
    ("mmi-service-400", "mmi.service", ["400"]),
    ("mmi-unknown-501", "mmi.nope", ["501"]),
    ("mmi-services", "mmi.services", ['["echo"]']),
]

BROKER_ERRORS: list[tuple[int, str, str]] = [
    (504, "expired", "request to 'echo' expired after 300.0 s in the queue: "
     "no worker offers it"),
    (503, "queue-full", "10000 requests already wait for 'echo' (limit 10000)"),
    (500, "attempts-exhausted", "request to 'echo' was given up after 3 workers died "
     "or vanished while handling it"),
    (502, "start-failed", "the worker for 'echo' exited with status 1"),
    (503, "broker-stopping", "the broker stopped before 'echo' answered; send the request "
     "again once a broker runs"),
    (400, "name-too-long", "the service name 'echo...' is 300 bytes long; at most 255 are "
     "allowed"),
]


def client_vectors(dialect: str) -> list[dict]:
    out = [vector(name, dialect, C2B, {"command": "REQUEST", "service": service, "body": body})
           for name, service, body in REQUESTS]
    service_of = (lambda s: None) if dialect == MT else (lambda s: s)
    final = final_name(dialect)
    if dialect != V01:
        out.append(vector("partial", dialect, B2C, {"command": "PARTIAL",
                                                     "service": service_of("echo"),
                                                     "body": ["part 1"]}))
    for name, service, body in REPLIES:
        out.append(vector(name.replace("final", final.lower()), dialect, B2C,
                          {"command": final, "service": service_of(service), "body": body}))
    for code, reason, message in BROKER_ERRORS:
        meaning = {"command": final, "service": service_of("echo"),
                   "body": [BROKER_ERROR, str(code), reason, message],
                   "error": {"code": code, "reason": reason, "message": message,
                             "service": "echo"}}
        out.append(vector(f"error-{reason}", dialect, B2C, meaning))
    out.append(vector("worker-error", dialect, B2C, {
        "command": final, "service": service_of("echo"),
        "body": [WORKER_ERROR, "ValueError", "bad input", TRACEBACK_FRAME, "host:4242:1"],
        "worker_error": {"type": "ValueError", "message": "bad input",
                         "traceback": TRACEBACK, "worker": "host:4242:1"}}))
    out.append(vector("worker-error-three-frames", dialect, B2C, {
        "command": final, "service": service_of("echo"),
        "body": [WORKER_ERROR, "ValueError", "bad input"],
        "worker_error": {"type": "ValueError", "message": "bad input", "traceback": "",
                         "worker": ""}}))
    return out


def worker_vectors(dialect: str) -> list[dict]:
    final = final_name(dialect)
    out = [vector("ready", dialect, W2B, {"command": "READY", "service": "echo"})]
    if dialect != V01:
        out.append(vector("partial", dialect, W2B, {"command": "PARTIAL", "address": ADDRESS,
                                                     "body": ["part 1"]}))
    for name, body in (("final", ["hi"]), ("final-empty-body", []),
                       ("worker-error", [WORKER_ERROR, "ValueError", "bad input",
                                         TRACEBACK_FRAME, "host:4242:1"])):
        out.append(vector(name.replace("final", final.lower()), dialect, W2B,
                          {"command": final, "address": ADDRESS, "body": body}))
    for name, body in (("request", ["hi"]), ("request-empty-body", []),
                       ("request-binary-body", [{"hex": "00ff"}, "", "two"])):
        out.append(vector(name, dialect, B2W, {"command": "REQUEST", "address": ADDRESS,
                                               "body": body}))
    for direction in (W2B, B2W):
        for command in ("HEARTBEAT", "DISCONNECT"):
            out.append(vector(command.lower(), dialect, direction, {"command": command}))
    return out


# ------------------------------------------------------------ exchanges with the broker


def msg(time: float, peer: str, meaning: dict) -> dict:
    return {"time": time, "peer": peer, "message": meaning}


def tick(time: float) -> dict:
    return {"time": time, "tick": True}


def req(service: str, *body: str) -> dict:
    return {"command": "REQUEST", "service": service, "body": list(body)}


def ready(service: str = "echo") -> dict:
    return {"command": "READY", "service": service}


def answer(command: str, address: str, *body: str | dict) -> dict:
    return {"command": command, "address": address, "body": list(body)}


def beat() -> dict:
    return {"command": "HEARTBEAT"}


def gone(time: float, peer: str) -> dict:
    """The peer's connection closed (the broker loop learns it from libzmq)."""
    return {"time": time, "disconnected": peer}


FIRST, SECOND = "0000000000000001", "0000000000000002"

EXCHANGES: list[dict[str, Any]] = [
    {"name": "mmi-service",
     "description": "MMI answers: 200, 404, 400, 501, the list of services",
     "peers": {"w1": ("worker", V02), "c1": ("client", V02)},
     "steps": [msg(0, "w1", ready()),
               msg(1, "c1", req("mmi.service", "echo")),
               msg(1, "c1", req("mmi.service", "nope")),
               msg(1, "c1", req("mmi.service")),
               msg(1, "c1", req("mmi.nope")),
               msg(1, "c1", req("mmi.services"))]},
    {"name": "mmi-other-dialects",
     "description": "MMI answers to majortomo (no service frame) and MDP/0.1 clients",
     "peers": {"m1": ("client", MT), "o1": ("client", V01), "w1": ("worker", MT)},
     "steps": [msg(0, "m1", req("mmi.service", "echo")),
               msg(0, "w1", ready()),
               msg(0, "o1", req("mmi.service", "echo"))]},
    {"name": "request-waits-for-worker",
     "description": "a request for a service nobody offers waits, and goes to the first "
                    "worker that registers; the address frame is the broker's request id",
     "peers": {"c1": ("client", V02), "w1": ("worker", V02)},
     "steps": [msg(0, "c1", req("echo", "hi")),
               msg(1, "w1", ready()),
               msg(2, "w1", answer("FINAL", FIRST, "hi"))]},
    {"name": "stream-to-v01-client",
     "description": "an MDP/0.2 worker streams; the MDP/0.1 client gets one REPLY with "
                    "every part's frames, then the final body's",
     "peers": {"w1": ("worker", V02), "o1": ("client", V01)},
     "steps": [msg(0, "w1", ready()),
               msg(0, "o1", req("echo", "x")),
               msg(1, "w1", answer("PARTIAL", FIRST, "a", "b")),
               msg(1, "w1", answer("PARTIAL", FIRST, "c")),
               msg(1, "w1", answer("FINAL", FIRST, "d"))]},
    {"name": "stream-to-majortomo-client",
     "description": "an MDP/0.2 worker streams to a majortomo client: parts relayed as "
                    "they come, without service frame",
     "peers": {"w1": ("worker", V02), "m1": ("client", MT)},
     "steps": [msg(0, "w1", ready()),
               msg(0, "m1", req("echo", "x")),
               msg(1, "w1", answer("PARTIAL", FIRST, "a")),
               msg(1, "w1", answer("FINAL", FIRST, "b"))]},
    {"name": "v01-worker-to-v02-client",
     "description": "an MDP/0.1 worker's REPLY reaches an MDP/0.2 client as FINAL",
     "peers": {"w1": ("worker", V01), "c1": ("client", V02)},
     "steps": [msg(0, "w1", ready()),
               msg(0, "c1", req("echo", "x")),
               msg(1, "w1", answer("REPLY", FIRST, "y"))]},
    {"name": "expired-504",
     "description": "a request nobody takes is answered 504 when it expires",
     "config": {"request_expiry": 10.0, "heartbeat_interval": 5.0},
     "peers": {"o1": ("client", V01)},
     "steps": [msg(0, "o1", req("echo", "x")), tick(5), tick(10)]},
    {"name": "queue-full-503",
     "description": "a request finding the queue at its limit is refused at once",
     "config": {"queue_limit": 1},
     "peers": {"m1": ("client", MT), "c1": ("client", V02)},
     "steps": [msg(0, "m1", req("echo", "x")), msg(0, "c1", req("echo", "y"))]},
    {"name": "attempts-exhausted-500",
     "description": "two workers die holding the request; with max_attempts 2 the "
                    "client gets 500",
     "config": {"heartbeat_interval": 1.0, "heartbeat_liveness": 2, "max_attempts": 2},
     "peers": {"w1": ("worker", V02), "w2": ("worker", V02), "c1": ("client", V02)},
     "steps": [msg(0, "w1", ready()), msg(0, "c1", req("echo", "x")),
               tick(1), tick(2), msg(2.5, "w2", ready()), tick(3), tick(4), tick(5)]},
    {"name": "stale-reply-dropped",
     "description": "a worker given up for dead answers late: DISCONNECT, nothing to the "
                    "client; after it registers again its old reply is dropped silently",
     "config": {"heartbeat_interval": 1.0, "heartbeat_liveness": 2},
     "peers": {"w1": ("worker", V02), "w2": ("worker", V02), "c1": ("client", V02)},
     "steps": [msg(0, "w1", ready()), msg(0, "c1", req("echo", "x")),
               msg(0.5, "w2", ready()), tick(1), msg(1.5, "w2", beat()), tick(2),
               msg(2.1, "w1", answer("FINAL", FIRST, "late")),
               msg(2.2, "w1", ready()),
               msg(2.3, "w1", answer("FINAL", FIRST, "late again")),
               msg(2.4, "w2", answer("FINAL", FIRST, "x"))]},
    {"name": "protocol-violations",
     "description": "mmi. READY, unknown worker's HEARTBEAT and reply, READY twice, garbage",
     "peers": {"w1": ("worker", V02), "w2": ("worker", V01), "w3": ("worker", MT)},
     "steps": [msg(0, "w1", ready("mmi.mine")),
               msg(0, "w2", beat()),
               msg(0, "w3", answer("FINAL", FIRST, "x")),
               msg(0, "w1", ready()),
               msg(0, "w1", ready()),
               {"time": 0, "peer": "w2", "raw": ["", "4d44505730", "01"]}]},
    {"name": "start-failed-502",
     "description": "the layer above fails the queued requests of a service it could not "
                    "start a worker for",
     "peers": {"c1": ("client", V02), "o1": ("client", V01)},
     "steps": [msg(0, "c1", req("echo", "x")), msg(0, "o1", req("echo", "y")),
               {"time": 1, "fail_queued": {"service": "echo", "code": 502,
                                           "reason": "start-failed",
                                           "message": "the worker exited with status 1"}}]},
    {"name": "shutdown",
     "description": "a broker that stops answers every request it holds (queued or with a "
                    "worker) 503 broker-stopping, and DISCONNECTs every worker in its dialect",
     "peers": {"w1": ("worker", V02), "w2": ("worker", V01), "w3": ("worker", MT),
               "c1": ("client", V02), "o1": ("client", V01), "m1": ("client", MT)},
     "steps": [msg(0, "w1", ready()), msg(0, "w2", ready("other")), msg(0, "w3", ready()),
               msg(0, "c1", req("echo", "x")), msg(0, "o1", req("nobody", "y")),
               msg(0, "m1", req("other", "z")),
               {"time": 1, "shutdown": True}]},
    {"name": "busy-worker-keeps-its-request",
     "description": "a busy worker that sends no heartbeat (RFC 7's reference worker while "
                    "its handler runs) is kept until the busy timeout; an idle one is not",
     "config": {"heartbeat_interval": 1.0, "heartbeat_liveness": 2, "busy_timeout": 10.0},
     "peers": {"w1": ("worker", V01), "w2": ("worker", V01), "o1": ("client", V01)},
     "steps": [msg(0, "w1", ready()), msg(0, "w2", ready("other")),
               msg(0, "o1", req("echo", "slow")), tick(1), tick(2), tick(3),
               msg(3.5, "w1", answer("REPLY", FIRST, "done")), tick(4), tick(5), tick(6)]},
    {"name": "busy-timeout",
     "description": "a busy worker silent for longer than the busy timeout is given up; "
                    "its request goes to another worker",
     "config": {"heartbeat_interval": 1.0, "heartbeat_liveness": 2, "busy_timeout": 3.0},
     "peers": {"w1": ("worker", V02), "w2": ("worker", V02), "c1": ("client", V02)},
     "steps": [msg(0, "w1", ready()), msg(0, "c1", req("echo", "x")), msg(0, "w2", ready()),
               msg(0.5, "w2", beat()), tick(1), msg(1.5, "w2", beat()), tick(2),
               msg(2.5, "w2", beat()), tick(3)]},
    {"name": "connection-closed",
     "description": "a worker whose connection closes is removed at once and its request "
                    "re-sent; a client whose connection closes is forgotten: its queued "
                    "request is dropped, the reply to the one a worker holds is not relayed",
     "peers": {"w1": ("worker", V02), "w2": ("worker", V02), "c1": ("client", V02),
               "c2": ("client", V02), "c3": ("client", V02)},
     "steps": [msg(0, "w1", ready()), msg(0, "c1", req("echo", "a")),
               msg(0, "c2", req("echo", "b")), gone(1, "w1"), gone(1, "c2"),
               msg(2, "w2", ready()), msg(2, "c3", req("echo", "c")), gone(3, "c1"),
               msg(4, "w2", answer("FINAL", FIRST, "a")),
               msg(4, "w2", answer("FINAL", "0000000000000003", "c"))]},
    {"name": "clients-take-turns",
     "description": "a script with three connections and a plain client share one worker: "
                    "they are served in turn, not in the order their requests came; the "
                    "plain client, which has had no turn yet, goes before the script's "
                    "second request",
     "peers": {"w1": ("worker", V02), "share:node:7:ab/1": ("client", V02),
               "share:node:7:ab/2": ("client", V02), "share:node:7:ab/3": ("client", MT),
               "c1": ("client", V01)},
     "steps": [msg(0, "w1", ready()), msg(0, "share:node:7:ab/1", req("echo", "m1")),
               msg(0, "share:node:7:ab/2", req("echo", "m2")),
               msg(0, "share:node:7:ab/3", req("echo", "m3")), msg(0, "c1", req("echo", "c")),
               msg(1, "w1", answer("FINAL", FIRST, "m1")),
               msg(2, "w1", answer("FINAL", "0000000000000004", "c")),
               msg(3, "w1", answer("FINAL", SECOND, "m2"))]},
    {"name": "worker-forges-broker-error",
     "description": "only the broker may send a broker error: a worker reply starting with "
                    "its marker reaches the client as a worker error",
     "peers": {"w1": ("worker", V02), "c1": ("client", V02)},
     "steps": [msg(0, "w1", ready()), msg(0, "c1", req("echo", "x")),
               msg(1, "w1", answer("FINAL", FIRST, BROKER_ERROR, "503", "queue-full",
                                   "forged"))]},
    {"name": "service-name-too-long",
     "description": "a request for a name over 255 bytes is refused 400 name-too-long, "
                    "with the name in the service frame; such a READY is refused",
     "peers": {"c1": ("client", V02), "o1": ("client", V01), "w1": ("worker", V02)},
     "steps": [msg(0, "c1", req("e" * 256, "x")), msg(0, "o1", req("e" * 300)),
               msg(0, "w1", ready("e" * 256))]},
]


def peer_id(name: str) -> bytes:
    """A peer's routing identity: ``share:...`` names are a client's connections as they
    name themselves (mdp.md 6.1), the others made up."""
    return name.encode() if name.startswith("share:") else f"peer-{name}".encode()


def run_exchange(spec: dict) -> dict:
    config = BrokerConfig(**spec.get("config", {}))
    core = BrokerCore(config, now=0.0)
    peers = spec["peers"]
    steps = []
    for step in spec["steps"]:
        step = dict(step)
        out = _apply(core, peers, step)
        if "peer" in step:
            step["peer"] = peer_id(step["peer"]).hex()
        if "_frames" in step:
            step["frames"] = [f.hex() for f in step.pop("_frames")]
        step["output"] = [_record(peers, target, frames) for target, frames in out]
        steps.append(step)
    return {"name": spec["name"], "description": spec["description"],
            "config": spec.get("config", {}),
            "peers": {peer_id(n).hex(): {"name": n, "role": r, "dialect": d}
                      for n, (r, d) in peers.items()},
            "steps": steps}


def _apply(core: BrokerCore, peers: dict, step: dict) -> list:
    now = float(step["time"])
    if step.get("tick"):
        return core.tick(now)
    if step.get("shutdown"):
        return core.shutdown(now)
    if "disconnected" in step:
        out = core.peer_disconnected(peer_id(step["disconnected"]), now)
        step["disconnected"] = peer_id(step["disconnected"]).hex()
        return out
    if "fail_queued" in step:
        f = step["fail_queued"]
        error = BrokerError(f["message"], f["service"], code=f["code"], reason=f["reason"])
        return core.fail_queued(f["service"].encode(), error)
    if "raw" in step:
        frames = [bytes.fromhex(h) for h in step.pop("raw")]
    else:
        role, dialect = peers[step["peer"]]
        frames = encode(dialect, C2B if role == "client" else W2B, step["message"])
    step["_frames"] = frames
    return core.handle(peer_id(step["peer"]), frames, now)


def _record(peers: dict, target: bytes, frames: list) -> dict:
    name = next(name for name in peers if peer_id(name) == target)
    role, dialect = peers[name]
    meaning = _meaning(role, dialect, frames)
    direction = B2C if role == "client" else B2W
    if encode(dialect, direction, meaning) != frames:
        raise AssertionError(f"the broker's frames to {name} disagree with the spec: {frames}")
    return {"peer": target.hex(), "meaning": meaning, "frames": [f.hex() for f in frames]}


def _meaning(role: str, dialect: str, frames: list) -> dict:
    """Read what the broker sent, with the reference codec (checked against encode above)."""
    d = p.Dialect(dialect)
    if role == "client":
        reply = p.parse_client_reply(d, frames)
        command = "PARTIAL" if not reply.final else final_name(dialect)
        service = None if reply.service is None else reply.service.decode()
        return {"command": command, "service": service,
                "body": [frame_json(bytes(f)) for f in reply.body]}
    message = p.parse_worker_message(d, frames)
    if isinstance(message, p.WorkerRequest):
        return {"command": "REQUEST", "address": message.address.hex(),
                "body": [frame_json(bytes(f)) for f in message.body]}
    return {"command": "HEARTBEAT" if isinstance(message, p.Heartbeat) else "DISCONNECT"}


# ------------------------------------------------------------ output


def build() -> dict:
    vectors = []
    for dialect in DIALECTS:
        vectors += client_vectors(dialect) + worker_vectors(dialect)
    return {
        "about": "Byte-exact Majordomo vectors for mdp/ (see protocol/mdp.md). Frames are "
                 "hex. In meanings, a body frame is a string (its UTF-8 bytes) or "
                 "{\"hex\": ...}; address is hex; service null means the dialect sends no "
                 "service frame. In exchanges, error message texts are informative only.",
        "vectors": vectors,
        "exchanges": [run_exchange(spec) for spec in EXCHANGES],
    }


def main() -> None:
    OUTPUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
