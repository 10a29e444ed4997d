"""Many structures through one served model, with many requests in flight from one script.

``evaluate(model, structures)`` and ``Models()[model].map(structures)`` send up to
``max_in_flight`` requests at once (the asyncio client, one connection per request), so
every worker of the model, and a batching worker's whole batch, has work while the next
requests are on their way. Small structures go several to a request (a chunk: payload
version 2), so that a request's own cost, larger than a cheap model's, is shared out; a
chunk is sized by the time the worker takes for it (``chunking``), so that another
script's single call, which the broker serves in turn with the map's requests, waits
behind a few milliseconds of the map's work, not a long chunk's.
The asyncio loop runs in a thread of its own: the caller may be a plain script or a
Jupyter cell whose own loop is already running.

A failed structure, by default, raises ``StructureFailed`` when its turn comes (as
``concurrent.futures.Executor.map`` does), naming its index and the model's error;
``on_error="keep"`` instead hands back every structure, a failed one without a
calculator and with the error in ``atoms.info["error"]``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ase import Atoms
from ase.calculators.calculator import all_properties
from ase.calculators.singlepoint import SinglePointCalculator

from mdp.aio import AsyncClient
from mdp.errors import AttemptsExhausted, MDPError, WorkerError
from mlipx_serve.client.calculator import RESENDS, default_timeout
from mlipx_serve.client.chunking import (
    LONE_TURN,
    MAX_CHUNK,
    TURN,
    ChunkSizer,
    most_structures,
)
from mlipx_serve.client.failures import served_error, structure_error
from mlipx_serve.client.keys import curve_options
from mlipx_serve.client.routing import route
from mlipx_serve.errors import MlipxServeError, PayloadError
from mlipx_serve.wire.definition import Definition
from mlipx_serve.wire.endpoints import chosen_broker
from mlipx_serve.wire.payload import (
    Computed,
    RemoteFailure,
    chunk_key,
    encode_chunk,
    encode_request,
    read_chunk_reply,
    read_reply,
)

DEFAULT_PROPERTIES = ("energy", "forces")
ON_ERROR = ("raise", "keep")
_DONE = object()
Limits = Callable[[], tuple[int, int]]  # (atoms, structures) the next chunk may hold
PROBES = 2  # requests sent one at a time at first, whose times size the chunks after them
SHARING_POLL = 0.5  # seconds between questions to the broker: do others use the model?
HOLD_ON = 0.01  # seconds between looks at whether the caller has taken results


class StructureFailed(MlipxServeError):
    """One structure of a ``map`` or ``evaluate`` failed; ``__cause__`` says how."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"structure {index} failed: {error}")
        self.index = index
        self.error = error


def evaluate(model: Any, structures: Iterable[Atoms],
             properties: Sequence[str] = DEFAULT_PROPERTIES, *, broker: str | None = None,
             **options: Any) -> list[Atoms]:
    """``map``'s results as a list, in input order (see ``map_structures``). Interrupted
    (Ctrl-C, in a notebook too), it ends its requests at once: the broker drops those
    still queued, so the scripts that share the model do not wait behind them."""
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
    that times its number of structures when ``chunk_size`` is given.

    Small structures go several to a request (a chunk), so that a request's own cost is
    shared out: ``chunk_size`` structures, or by default as many as take the worker about
    as long as one of them plus a few milliseconds (``chunking.ChunkSizer``), learnt from
    the replies; large ones one a request. ``max_in_flight`` counts requests.
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
    timeout = default_timeout() if timeout is None else timeout
    return _results(lambda: _Run(*_service(model, broker), broker, structures, chunk_size,
                                 total, list(properties), max(1, max_in_flight), timeout),
                    ordered, on_error, _progress(progress, label, total))


def _chunks(structures: Iterable[Atoms], limits: Limits) -> Iterator[list[tuple[int, Atoms]]]:
    """(index, structure) in chunks of structures that carry the same arrays
    (``payload.chunk_key``), each as large as ``limits()`` says when it starts: so many
    atoms (a structure with more goes alone) and so many structures at most."""
    chunk: list[tuple[int, Atoms]] = []
    atoms = most_atoms = most = 0
    key = None
    for index, structure in enumerate(structures):
        its_key = chunk_key(structure)
        if chunk and (len(chunk) >= most or atoms + len(structure) > most_atoms
                      or its_key != key):
            yield chunk
            chunk, atoms = [], 0
        if not chunk:
            (most_atoms, most), key = limits(), its_key
        chunk.append((index, structure))
        atoms += len(structure)
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
                 structures: Iterable[Atoms], chunk_size: int | None, total: int | None,
                 properties: list[str], max_in_flight: int, timeout: float):
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
        self._sizer = None if chunk_size else ChunkSizer()
        self._answered = 0  # requests answered (or failed)
        self._one_by_one = False  # a worker refused a chunk: it reads one structure only
        self._ahead = 2 * max_in_flight * MAX_CHUNK  # structures sent, not yet handed back
        self._chunks = _chunks(structures, self._limits(chunk_size, total))
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

    def _limits(self, chunk_size: int | None, total: int | None) -> Limits:
        """What the next chunk may hold: ``chunk_size`` structures when given, else what
        the sizer says, one structure only where a worker reads no chunks."""
        def limits() -> tuple[int, int]:
            if self._one_by_one:
                return 1, 1
            if chunk_size:
                return sys.maxsize, chunk_size
            return self._sizer.budget(), most_structures(total)

        return limits

    async def _send_all(self) -> None:
        slots = asyncio.Semaphore(self._slots)
        tasks = set()
        watch = asyncio.create_task(self._watch_sharing()) if self._sizer else None
        try:
            while True:
                if self._answered < PROBES and self._sizer is not None and tasks:
                    await asyncio.wait(tasks)  # the first few one at a time: sizes to learn
                while len(self.inputs) >= self._ahead:  # the caller takes results slowly:
                    await asyncio.sleep(HOLD_ON)        # read no more until it does
                await slots.acquire()  # first: a chunk is sized when it can go
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self.inputs.update(chunk)
                task = asyncio.create_task(self._one(chunk, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:  # cancelled (the caller stopped early): end the requests still out
            for task in [*tasks, *filter(None, [watch])]:
                task.cancel()
            await asyncio.gather(*tasks, *filter(None, [watch]), return_exceptions=True)

    async def _watch_sharing(self) -> None:
        """Short turns while other scripts use the model, long ones once none has for two
        answers in a row (a map that starts beside another learns of it only once both
        have sent something), as the broker says (``mmi.clients``, on a connection of
        its own); a broker that cannot say gets short ones."""
        alone = 0  # answers in a row that said nobody else uses the model
        async with AsyncClient(self._broker, max_in_flight=1, timeout=10.0, retries=0,
                               **curve_options()) as client:
            while True:
                try:
                    reply = await client.request("mmi.clients", self.model)
                    others = json.loads(bytes(reply[0]))["others"]
                except MDPError:
                    others = None  # (no answer now: as it was)
                except (ValueError, TypeError, KeyError, IndexError):
                    return  # a broker without it
                if others is not None:
                    alone = 0 if others else alone + 1
                    self._sizer.turn = LONE_TURN if alone >= 2 else TURN
                await asyncio.sleep(SHARING_POLL)

    async def _one(self, chunk: list[tuple[int, Atoms]], slots: asyncio.Semaphore) -> None:
        """One request's structures, each with its results or its error, to the queue:
        whatever goes wrong, every structure is accounted for."""
        try:
            results = await self._computed(chunk)
        except Exception as error:  # not the model's nor the bus's: a socket's, say
            results = [error] * len(chunk)
        finally:
            self._answered += 1
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
                computed = read_reply(await self._client.request(self.model, *frames))
                self._observe(structures, computed)
                return [computed.results]
            frames = encode_chunk(structures, self.properties, self.definition)
            # A chunk sized by time takes about as long as one structure; one of a size
            # given may take as long as its structures together.
            timeout = self._timeout * (1 if self._sizer else len(chunk))
            computed = read_chunk_reply(await self._client.request(self.model, *frames,
                                                                   timeout=timeout))
            self._observe(structures, computed)
            results = [self._result(found) for found in computed.results]
        except AttemptsExhausted as error:
            if len(chunk) == 1:
                return [served_error(error, self.model, self._broker)]
            # Workers died computing the chunk: one of its structures may kill them, and
            # only that one must fail. Each alone tells which, one after another (together,
            # a batching worker would batch them again, the healthy beside the deadly).
            return await self._one_at_a_time(chunk)
        except WorkerError as error:
            if len(chunk) > 1 and _reads_no_chunks(error):
                self._one_by_one = True  # a worker of an older kind: one structure a request
                return await self._one_at_a_time(chunk)
            return [served_error(error, self.model, self._broker)] * len(chunk)
        except MDPError as error:
            return [served_error(error, self.model, self._broker)] * len(chunk)
        except MlipxServeError as error:  # a reply that is not a payload
            return [error] * len(chunk)
        if len(results) != len(chunk):
            return [PayloadError(f"the reply to a chunk of {len(chunk)} structures held "
                                 f"{len(results)} results")] * len(chunk)
        return results

    async def _one_at_a_time(self, chunk: list[tuple[int, Atoms]]) -> list[Any]:
        return [(await self._computed([item]))[0] for item in chunk]

    def _observe(self, structures: list[Atoms], computed: Computed) -> None:
        if self._sizer is not None and computed.seconds is not None:
            self._sizer.observe(sum(map(len, structures)), computed.seconds)

    def _result(self, found: dict[str, Any] | RemoteFailure) -> dict[str, Any] | Exception:
        return structure_error(found, self.model) if isinstance(found, RemoteFailure) else found


def _reads_no_chunks(error: WorkerError) -> bool:
    """Whether a worker refused a chunk because it reads one structure a request only."""
    return error.error_type == "PayloadError" and "unsupported payload version 2" in \
        error.message


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

