"""The asyncio Majordomo client: many requests in flight from one process.

MDP allows one outstanding request per client connection, so the client keeps a pool of
connections and gives each request its own. ``max_in_flight`` caps the pool; requests
beyond it wait for a free connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio

from . import protocol as p
from .client import ClientBase, check_reply


class AsyncClient(ClientBase):
    """Like ``Client`` (same settings), but awaitable and with many requests at once."""

    def __init__(self, endpoint: str, *, max_in_flight: int = 64,
                 context: zmq.asyncio.Context | None = None, **settings: Any):
        super().__init__(endpoint, **settings)
        self.context = context or zmq.asyncio.Context.instance()
        self._free: list[zmq.asyncio.Socket] = []
        self._slots = asyncio.Semaphore(max_in_flight)
        self._all: set[zmq.asyncio.Socket] = set()

    async def request(self, service: str | bytes, *frames: Any, timeout: float | None = None,
                      retries: int | None = None) -> list:
        """Send one request and return the reply's frames (streamed parts joined)."""
        body: list = []
        async for part in self.stream(service, *frames, timeout=timeout, retries=retries):
            body.extend(part)
        return body

    async def stream(self, service: str | bytes, *frames: Any, timeout: float | None = None,
                     retries: int | None = None) -> AsyncIterator[list]:
        service, message, timeout, attempts = self._prepare(service, frames, timeout, retries)
        async with self._slots:
            sock, reply = await self._first_reply(service, message, timeout, attempts)
            finished = False
            try:
                while True:
                    finished = reply.final
                    yield check_reply(reply, service)
                    if finished:
                        break
                    reply = await self._receive(sock, timeout)
                    if reply is None:
                        raise self._stalled(service, timeout)
            finally:
                if finished:
                    self._free.append(sock)
                else:
                    self._discard(sock)

    async def _first_reply(self, service: bytes, message: list, timeout: float,
                           attempts: int) -> tuple[zmq.asyncio.Socket, p.ClientReply]:
        for _ in range(attempts):
            sock = self._take_socket()
            await sock.send_multipart(message, copy=False)
            try:
                reply = await self._receive(sock, timeout)
            except BaseException:
                self._discard(sock)
                raise
            if reply is not None:
                return sock, reply
            self._discard(sock)
        raise self._no_reply(service, attempts, timeout)

    async def _receive(self, sock: zmq.asyncio.Socket, timeout: float) -> p.ClientReply | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                frames = await asyncio.wait_for(sock.recv_multipart(copy=self.copy), remaining)
            except asyncio.TimeoutError:
                return None
            reply = self._parse(frames)
            if reply is not None:
                return reply

    def _take_socket(self) -> zmq.asyncio.Socket:
        if self._free:
            return self._free.pop()
        sock = self._connect(self.context)
        self._all.add(sock)
        return sock

    def _discard(self, sock: zmq.asyncio.Socket) -> None:
        self._all.discard(sock)
        sock.close(linger=0)

    def close(self) -> None:
        for sock in list(self._all):
            self._discard(sock)
        self._free.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
