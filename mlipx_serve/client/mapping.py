"""Many structures through one served model, with many requests in flight from one script.

``evaluate(model, structures)`` and ``Models()[model].map(structures)`` send up to
``max_in_flight`` requests at once (the asyncio client, one connection per request), so
every worker of the model, and a batching worker's whole batch, has work while the next
requests are on their way. Small structures go several to a request (a chunk: payload
version 2), so that a request's own cost, larger than a cheap model's, is shared out.
The asyncio loop runs in a thread of its own: the caller may be a plain script or a
Jupyter cell whose own loop is already running.

A failed structure, by default, raises ``StructureFailed`` when its turn comes (as
``concurrent.futures.Executor.map`` does), naming its index and the model's error;
``on_error="keep"`` instead hands back every structure, a failed one without a
calculator and with the error in ``atoms.info["error"]``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ase import Atoms
from ase.calculators.calculator import all_properties
from ase.calculators.singlepoint import SinglePointCalculator

from mdp.aio import AsyncClient
from mdp.errors import AttemptsExhausted, MDPError
from mlipx_serve.client.calculator import RESENDS, default_timeout
from mlipx_serve.client.failures import served_error, structure_error
from mlipx_serve.client.keys import curve_options
from mlipx_serve.client.routing import route
from mlipx_serve.errors import MlipxServeError, PayloadError
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.endpoints import chosen_broker
from mlipx_serve.wire.payload import (
    RemoteFailure,
    chunk_key,
    decode_chunk_reply,
    decode_reply,
    encode_chunk,
    encode_request,
)

DEFAULT_PROPERTIES = ("energy", "forces")
CHUNK_ATOMS = 4096  # atoms of small structures that go together in one request
MAX_CHUNK = 64  # structures in one request, at most, unless chunk_size says
MIN_CHUNKS = 8  # requests a known number of structures is split into, at least
ON_ERROR = ("raise", "keep")
_DONE = object()


class StructureFailed(MlipxServeError):
    """One structure of a ``map`` or ``evaluate`` failed; ``__cause__`` says how."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"structure {index} failed: {error}")
        self.index = index
        self.error = error


def evaluate(model: Any, structures: Iterable[Atoms],
             properties: Sequence[str] = DEFAULT_PROPERTIES, *, broker: str | None = None,
             **options: Any) -> list[Atoms]:
    """``map``'s results as a list, in input order (see ``map_structures``)."""
    return list(map_structures(model, structures, properties, broker=broker, **options))


def map_structures(model: Any, structures: Iterable[Atoms],
                   properties: Sequence[str] = DEFAULT_PROPERTIES, *,
                   broker: str | None = None, max_in_flight: int = 32, ordered: bool = True,
                   on_error: str = "raise", progress: bool | None = None,
                   timeout: float | None = None,
                   chunk_size: int | None = None) -> Iterator[Atoms]:
    """For each structure, a copy whose ``calc`` is a SinglePointCalculator with the results.

    ``model`` is a name (whatever the broker serves under it), or a definition
    (``GenericASECalculator`` and the like: exactly that model, under whatever service
    serves it, started by an autostarting broker if need be; ``NotServed`` if it cannot
    be). ``structures`` may be any iterable (a list, ``ase.io.iread(...)``): it is read as
    requests are sent. ``ordered=False`` yields each result as it arrives. ``progress``
    shows a bar (default: on a terminal or in Jupyter). ``timeout`` bounds the wait for
    each structure (default ``$MLIPX_SERVE_TIMEOUT`` or 600 s): a chunk's reply may take
    that times its number of structures.

    Small structures go several to a request (a chunk), so that a request's own cost is
    shared out: ``chunk_size`` structures, or by default as many as ``chunk_size_for``
    their size says (one a request for large ones). ``max_in_flight`` counts requests.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    if isinstance(properties, str):
        raise TypeError("properties must be a list of names, not a single string")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    total = len(structures) if hasattr(structures, "__len__") else None
    broker = chosen_broker(broker)  # here: a wrong endpoint fails the call, not a next()
    label = model if isinstance(model, str) else model.label()
    sizes = (lambda atoms: chunk_size) if chunk_size else \
        (lambda atoms: chunk_size_for(len(atoms), total))
    return _results(lambda: _Run(*_service(model, broker), broker, _chunks(structures, sizes),
                                 list(properties), max(1, max_in_flight),
                                 default_timeout() if timeout is None else timeout),
                    ordered, on_error, _progress(progress, label, total))


def chunk_size_for(atoms: int, total: int | None = None) -> int:
    """How many structures of ``atoms`` atoms go in one request: small ones up to
    ``CHUNK_ATOMS`` atoms together (at most ``MAX_CHUNK``), large ones one by one (their own
    data is then the cost); and of a known number of structures, at least ``MIN_CHUNKS``
    requests, so that several workers share them."""
    size = max(1, min(MAX_CHUNK, CHUNK_ATOMS // max(1, atoms)))
    return size if total is None else max(1, min(size, -(-total // MIN_CHUNKS)))


def _chunks(structures: Iterable[Atoms], size_for: Callable[[Atoms], int]
            ) -> Iterator[list[tuple[int, Atoms]]]:
    """(index, structure) in chunks, each of the size its first structure calls for, and
    of structures that carry the same arrays (``payload.chunk_key``)."""
    chunk: list[tuple[int, Atoms]] = []
    size, key = 1, None
    for index, atoms in enumerate(structures):
        its_key = chunk_key(atoms)
        if chunk and (len(chunk) >= size or its_key != key):
            yield chunk
            chunk = []
        if not chunk:
            size, key = size_for(atoms), its_key
        chunk.append((index, atoms))
    if chunk:
        yield chunk


def _service(model: Any, broker: str) -> tuple[str, Definition | None]:
    """A name goes as it is (a broker without it answers each request with the reason)."""
    return (model, None) if isinstance(model, str) else route(model, broker)


def _results(start, ordered: bool, on_error: str, progress) -> Iterator[Atoms]:
    """The generator behind ``map_structures``: nothing is sent before the first ``next``."""
    run = start()
    with progress as advance:
        try:
            for index, result in (run.in_order() if ordered else run.as_completed()):
                advance()
                if isinstance(result, Exception):
                    if on_error == "raise":
                        raise StructureFailed(index, result) from result
                    yield _failed_copy(run.inputs[index], result)
                else:
                    yield result
                run.inputs.pop(index, None)
        finally:
            run.stop()


class _Run:
    """The requests of one map, sent from an event loop in a thread of its own; results
    come back to the caller's thread through a queue as (index, Atoms or exception)."""

    def __init__(self, model: str, definition: Definition | None, broker: str,
                 chunks: Iterator[list[tuple[int, Atoms]]], properties: list[str],
                 max_in_flight: int, timeout: float):
        self.model = model
        self.definition = definition
        self.properties = properties
        self.inputs: dict[int, Atoms] = {}  # sent, not yet handed back
        self.results: queue.Queue = queue.Queue()
        self._broker = broker
        self._timeout = timeout
        self._client = AsyncClient(broker, max_in_flight=max_in_flight, timeout=timeout,
                                   retries=RESENDS, copy=False, **curve_options())
        self._slots = max_in_flight
        self._chunks = chunks
        self._loop = asyncio.new_event_loop()
        self._main: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, name="mlipx-map", daemon=True)
        self._thread.start()

    def in_order(self) -> Iterator[tuple[int, Any]]:
        waiting: dict[int, Any] = {}
        next_index = 0
        for index, result in self.as_completed():
            waiting[index] = result
            while next_index in waiting:
                yield next_index, waiting.pop(next_index)
                next_index += 1

    def as_completed(self) -> Iterator[tuple[int, Any]]:
        while (item := self.results.get()) is not _DONE:
            if isinstance(item, BaseException):  # the loop itself broke: say so here
                raise item
            yield item

    def stop(self) -> None:
        """Cancel what is still in flight (the caller stopped early) and end the thread."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._cancel)
            self._thread.join()
        self._loop.close()

    def _cancel(self) -> None:
        if self._main is not None:
            self._main.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._main = self._loop.create_task(self._send_all())
            self._loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # reading the structures failed, say
            self.results.put(error)
        finally:
            self._client.close()
            self.results.put(_DONE)

    async def _send_all(self) -> None:
        slots = asyncio.Semaphore(self._slots)
        tasks = set()
        try:
            for chunk in self._chunks:
                await slots.acquire()
                self.inputs.update(chunk)
                task = asyncio.create_task(self._one(chunk, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:  # cancelled (the caller stopped early): end the requests still out
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, chunk: list[tuple[int, Atoms]], slots: asyncio.Semaphore) -> None:
        """One request's structures, each with its results or its error, to the queue."""
        try:
            results = await self._computed(chunk)
        finally:
            slots.release()
        for (index, atoms), found in zip(chunk, results, strict=True):
            self.results.put((index, found if isinstance(found, Exception) else
                              _with_results(atoms, found)))

    async def _computed(self, chunk: list[tuple[int, Atoms]]) -> list[Any]:
        """Each structure's results or exception, from one request: a structure alone (the
        one-structure form every worker reads), or a chunk."""
        structures = [atoms for _, atoms in chunk]
        try:
            if len(chunk) == 1:
                frames = encode_request(structures[0], self.properties, self.definition)
                return [decode_reply(await self._client.request(self.model, *frames))]
            frames = encode_chunk(structures, self.properties, self.definition)
            reply = await self._client.request(self.model, *frames,
                                               timeout=self._timeout * len(chunk))
            results = [self._result(found) for found in decode_chunk_reply(reply)]
        except AttemptsExhausted as error:
            if len(chunk) == 1:
                return [served_error(error, self.model, self._broker)]
            # Workers died computing the chunk: one of its structures may kill them, and
            # only that one must fail. Each alone tells which.
            alone = await asyncio.gather(*(self._computed([item]) for item in chunk))
            return [found for [found] in alone]
        except MDPError as error:
            return [served_error(error, self.model, self._broker)] * len(chunk)
        except MlipxServeError as error:  # a reply that is not a payload
            return [error] * len(chunk)
        if len(results) != len(chunk):
            return [PayloadError(f"the reply to a chunk of {len(chunk)} structures held "
                                 f"{len(results)} results")] * len(chunk)
        return results

    def _result(self, found: dict[str, Any] | RemoteFailure) -> dict[str, Any] | Exception:
        return structure_error(found, self.model) if isinstance(found, RemoteFailure) else found


def _with_results(atoms: Atoms, results: dict[str, Any]) -> Atoms:
    """A copy with a SinglePointCalculator; results ASE has no name for (a model's own
    extras) are kept in its ``results`` too, beside the ones its getters answer."""
    copy = atoms.copy()
    copy.calc = SinglePointCalculator(copy, **{name: value for name, value in results.items()
                                               if name in all_properties})
    copy.calc.results.update((name, value) for name, value in results.items()
                             if name not in all_properties)
    return copy


def _failed_copy(atoms: Atoms, error: Exception) -> Atoms:
    copy = atoms.copy()
    copy.info["error"] = f"{type(error).__name__}: {error}"
    return copy


class _progress:
    """A rich progress bar on a terminal or in Jupyter; ``advance()`` per result."""

    def __init__(self, wanted: bool | None, model: str, total: int | None):
        from rich.console import Console

        console = Console(stderr=True)
        self.shown = (console.is_terminal or console.is_jupyter) if wanted is None else wanted
        self.console, self.model, self.total = console, model, total

    def __enter__(self):
        if not self.shown:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, transient=False)
        self.bar.start()
        task = self.bar.add_task(f"model '{self.model}'", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self.bar.stop()

