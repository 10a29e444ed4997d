"""What a worker's connections call with a request's frames: decode, check that the
request is for the model served, compute (one at a time, in batches, or with requests
waiting in the worker), encode. A request brings one structure, or a chunk of several
(protocol/ase-payload.md, version 2): a chunk is evaluated with the model's
``calculate_batch`` where it has one, each structure's result or error in its place."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from mlipx_serve.errors import DefinitionMismatch
from mlipx_serve.models.batch import batch_function
from mlipx_serve.wire.definition import SHORT_FINGERPRINT, Definition, differences
from mlipx_serve.wire.payload import (
    RequestedModel,
    describe_model,
    encode_chunk_results,
    encode_results,
    read_request,
)
from mlipx_serve.worker.batching import Batcher, one_after_another, together
from mlipx_serve.worker.compute import compute, owned

log = logging.getLogger(__name__)

Compute = Callable[[Atoms, list[str], list[str]], Mapping[str, Any]]  # (atoms, wanted, optional)
ComputeAll = Callable[[list[Atoms], list[str]], list[Any]]  # results or exceptions
Handler = Callable[[list], list]


def request_handler(calc: Calculator, name: str, served: Definition | None = None,
                    batch_size: int = 1, batch_wait: float = 0.01,
                    prefetch: int = 0) -> Handler:
    """What each of a worker's connections calls with a request's frames (see ``serve``)."""
    describe = functools.partial(describe_model, calc)
    if batch_size > 1:  # (a batch computes what its model computes: nothing optional)
        batcher = _batcher(calc, name, batch_size, batch_wait)
        return make_handler(lambda atoms, wanted, optional: batcher.compute(atoms, wanted),
                            batcher.compute_all, served, describe)
    evaluate = batch_function(calc) or one_after_another(calc)

    def compute_all(structures: list[Atoms], properties: list[str]) -> list[Any]:
        return together(evaluate, structures, properties)[0]

    if not prefetch:
        return make_handler(functools.partial(compute, calc), compute_all, served, describe)
    # Several connections, one calculator: one request at a time, decoding included (a
    # waiting request then takes no CPU from the one computed), and replies that carry
    # copies, as the calculator may fill its arrays again before a reply has gone out.
    handler = make_handler(lambda *request: owned(compute(calc, *request)), compute_all,
                           served, describe)
    lock = threading.Lock()

    def handle(frames: list) -> list:
        with lock:
            return handler(frames)

    return handle


def make_handler(compute_one: Compute, compute_all: ComputeAll, served: Definition | None,
                 describe: Callable[[], Mapping[str, Any]] | None = None) -> Handler:
    """Requests in, results out, for requests that ask for the ``served`` definition or
    name none. What a request raises (a ``PayloadError``, a ``DefinitionMismatch``, the
    model's own exception) the worker sends back as an MDP worker error, with the
    traceback: the broker counts it as failed, the client raises it typed, and the worker
    goes on; in a chunk, what one structure raises is that structure's error alone.
    Each reply says how long the request took here, by which clients size their chunks,
    and, where asked, what the model is (``describe()``)."""

    def handle(frames: list) -> list:
        started = time.perf_counter()
        request = read_request(frames)
        asked = request.model
        if asked is not None and (served is None or asked.fingerprint != served.fingerprint):
            raise DefinitionMismatch(mismatch_message(served, asked))
        if request.chunk:
            results = _each(compute_all, request.structures, request.properties)
            return encode_chunk_results(results, time.perf_counter() - started)
        # The reply's frames are views of the calculator's own arrays, which it may fill
        # again for the next structure: safe, as MDP gives a connection its next request
        # only after its reply has reached the broker.
        results = compute_one(request.structures[0], request.properties, request.optional)
        model = describe() if request.describe and describe is not None else None
        return encode_results(results, time.perf_counter() - started, model)

    return handle


def _each(compute_all: ComputeAll, structures: list[Any], properties: list[str]) -> list[Any]:
    """The results of a chunk's structures, the malformed ones' errors in their places."""
    good = [atoms for atoms in structures if not isinstance(atoms, Exception)]
    computed = iter(compute_all(good, properties) if good else [])
    return [atoms if isinstance(atoms, Exception) else next(computed) for atoms in structures]


def mismatch_message(served: Definition | None, asked: RequestedModel) -> str:
    """Why a request for another model is refused, naming what differs."""
    wanted = asked.fingerprint[:SHORT_FINGERPRINT]
    if served is None:
        return (f"the request is for a model defined as {wanted}, but this worker serves a "
                f"model without a definition to compare (a Python function, or a models "
                f"file entry of a class of its own), so it takes only requests that name "
                f"no definition: ask for it by name alone")
    said = f"this worker serves {served.short()} ({served.fingerprint[:SHORT_FINGERPRINT]})" \
           f", not the model the request is for ({wanted})"
    if asked.identity is None:
        return said
    return f"{said}: {'; '.join(differences(served.identity, asked.identity)) or 'same fields'}"


def _batcher(calc: Calculator, name: str, size: int, wait: float) -> Batcher:
    evaluate = batch_function(calc)
    if evaluate is None:
        log.warning("model '%s' (%s) has no calculate_batch: --batch-size %d takes %d "
                    "requests at a time but computes them one after another", name,
                    type(calc).__name__, size, size)
        evaluate = one_after_another(calc)
    return Batcher(evaluate, size, wait)
