"""The asyncio Majordomo client: many requests in flight from one process.

MDP allows one outstanding request per client connection, so the client keeps a pool of
connections (``Link``s, as the blocking client's) and gives each request its own.
``max_in_flight`` caps the pool; requests beyond it wait for a free connection. When to
send again and which errors to raise is the blocking client's rule (mdp/client.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio

from . import protocol as p
from .client import ClientBase, Deadlines, Link, Wait, check_reply, ms_until

LOOK_EVERY = 0.5  # seconds between looks at a waiting connection's monitor


def _readable(sock: zmq.asyncio.Socket) -> bool:
    """Whether a message waits on ``sock``, without awaiting (ZMQ_EVENTS is synchronous)."""
    return bool(sock.get(zmq.EVENTS) & zmq.POLLIN)


class AsyncClient(ClientBase):
    """Like ``Client`` (same settings), but awaitable and with many requests at once."""

    def __init__(self, endpoint: str, *, max_in_flight: int = 64,
                 context: zmq.asyncio.Context | None = None, **settings: Any):
        super().__init__(endpoint, **settings)
        self.context = context or zmq.asyncio.Context.instance()
        self._free: list[Link] = []
        self._slots = asyncio.Semaphore(max_in_flight)
        self._all: set[Link] = set()

    async def request(self, service: str | bytes, *frames: Any, timeout: float | None = None,
                      retries: int | None = None) -> list:
        """Send one request and return the reply's frames (streamed parts joined)."""
        body: list = []
        async for part in self.stream(service, *frames, timeout=timeout, retries=retries):
            body.extend(part)
        return body

    async def stream(self, service: str | bytes, *frames: Any, timeout: float | None = None,
                     retries: int | None = None) -> AsyncIterator[list]:
        service, message, timeout, sends = self._prepare(service, frames, timeout, retries)
        async with self._slots:
            link, reply = await self._first_reply(service, message, timeout, sends)
            finished = False
            try:
                while True:
                    finished = reply.final
                    yield check_reply(reply, service)
                    if finished:
                        break
                    reply = await self._wait(link, self._deadlines(timeout))
                    if isinstance(reply, Wait):
                        raise self._failure(reply, service, link, timeout, 1, True)
            finally:
                if finished:
                    self._free.append(link)
                else:
                    self._discard(link)

    async def _first_reply(self, service: bytes, message: list, timeout: float,
                           sends: int) -> tuple[Link, p.ClientReply]:
        for _ in range(sends):
            link = self._take_link()
            try:
                await self._read_monitor(link)  # what happened while it was idle is no news
                deadlines = self._deadlines(timeout)
                sent = await self._send(link, message, deadlines[1])
                reply = await self._wait(link, deadlines) if sent else Wait.NO_BROKER
            except BaseException:
                self._discard(link)
                raise
            if not isinstance(reply, Wait):
                return link, reply
            self._discard(link)  # a fresh connection: the old one may still hold the message
            if reply is not Wait.LOST:
                raise self._failure(reply, service, link, timeout, sends)
        raise self._failure(Wait.LOST, service, link, timeout, sends)

    async def _send(self, link: Link, message: list, connect_by: float) -> bool:
        """Send ``message``; False if no connection took it by ``connect_by``."""
        self._send_within(link, connect_by)
        try:
            await link.socket.send_multipart(message, copy=False)
        except zmq.Again:
            await self._read_monitor(link)  # a refusal says why
            return False
        return True

    async def _wait(self, link: Link, deadlines: Deadlines) -> p.ClientReply | Wait:
        """The next reply on ``link``, or why none will come.

        It waits on the socket alone, looking at the monitor every LOOK_EVERY seconds: an
        asyncio poller on both per request halved the client's throughput, and a lost
        broker is not back sooner than that anyway. The socket's own receive timeout ends
        each wait (pyzmq raises zmq.Again): ``asyncio.wait_for`` cost a task per reply.
        """
        deadline, connect_by = deadlines
        drops = link.drops
        while True:
            until = min(self._until(link, deadline, connect_by), time.monotonic() + LOOK_EVERY)
            link.socket.setsockopt(zmq.RCVTIMEO, max(1, ms_until(until)))
            try:
                frames = await link.socket.recv_multipart(copy=self.copy)
            except zmq.Again:
                frames = None
            if frames is not None:
                reply = self._parse(frames)
                if reply is not None:
                    return reply
                continue
            await self._read_monitor(link)
            if link.drops > drops and not _readable(link.socket):
                return Wait.LOST  # (a reply sent before the drop is read first)
            over = self._over(link, deadline, connect_by)
            if over is not None:
                return over

    @staticmethod
    async def _read_monitor(link: Link) -> None:
        while _readable(link.monitor):
            link.note(await link.monitor.recv_multipart())

    def _take_link(self) -> Link:
        if self._free:
            return self._free.pop()
        link = Link(self.context, self.endpoint, self.curve)
        self._all.add(link)
        return link

    def _discard(self, link: Link) -> None:
        self._all.discard(link)
        link.close()

    def close(self) -> None:
        for link in list(self._all):
            self._discard(link)
        self._free.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
