"""The requests waiting for one service, served client by client in turn (mdp.md 6.1).

Service goes in rounds: in each, every client with requests waiting hands over its oldest
one, in the order they lined up. A client that comes with work while it had none waiting
joins the round under way if it has not had its turn in it yet, else the next one. So a
request waits for at most one request of each other client with work queued, however many
that client keeps in flight, and a single call that comes while a map is served waits
only for the request in hand (start-time fair queuing, every request counted as one).
Within one client it is first come, first served. Adding and taking are O(1); only
dropping a client's requests (its own queue), expiry and putting a request back in front
(rare: its worker died) look further.

Pure bookkeeping: the requests are the broker core's; this needs of them only ``share``
(their client's ``ClientShare``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False, slots=True)
class ClientShare:
    """One client's part of a service: its waiting requests, and what it has had done."""

    key: bytes  # identities.client_of
    since: float  # when it came with work, after being idle long enough to be forgotten
    last_seen: float  # when it last sent, had a request taken, or was answered
    queue: deque = field(default_factory=deque)
    served_round: int = -1  # the last round in which it had its turn
    in_flight: int = 0  # its requests that workers hold now
    served: int = 0
    failed: int = 0

    def active(self) -> bool:
        return bool(self.queue or self.in_flight)


class FairQueue:
    """Requests of many clients, taken one client after another (``popleft``)."""

    __slots__ = ("clients", "_this_round", "_next_round", "_round", "_count")

    def __init__(self) -> None:
        self.clients: dict[bytes, ClientShare] = {}  # those seen lately, active or not
        # the clients with requests waiting, in the order of their turns: those yet to have
        # one in this round, then those that had theirs and have more
        self._this_round: deque[ClientShare] = deque()
        self._next_round: deque[ClientShare] = deque()
        self._round = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        """Every waiting request, one client's after another's, in the order of turns."""
        for share in itertools.chain(self._this_round, self._next_round):
            yield from share.queue

    def share(self, key: bytes, now: float) -> ClientShare:
        """The client ``key``'s share, made if it has none (or it was forgotten)."""
        share = self.clients.get(key)
        if share is None:
            share = self.clients[key] = ClientShare(key, now, now)
        else:
            share.last_seen = now
        return share

    def append(self, request: Any) -> None:
        share = request.share
        if not share.queue:
            had_turn = share.served_round == self._round
            (self._next_round if had_turn else self._this_round).append(share)
        share.queue.append(request)
        self._count += 1

    def appendleft(self, request: Any) -> None:
        """Back at the very front: its client goes first, this request before its others."""
        share = request.share
        if share.queue:
            self._leave_turns(share)
        share.queue.appendleft(request)
        self._this_round.appendleft(share)
        self._count += 1

    def popleft(self) -> Any:
        """The next request: the oldest of the client whose turn it is."""
        if not self._this_round:
            self._this_round, self._next_round = self._next_round, self._this_round
            self._round += 1
        share = self._this_round.popleft()
        share.served_round = self._round
        request = share.queue.popleft()
        if share.queue:
            self._next_round.append(share)
        self._count -= 1
        return request

    def drop(self, unwanted: Callable[[Any], bool], key: bytes | None = None) -> list:
        """Take out the requests that are ``unwanted``, of client ``key`` only or of all;
        the others keep their order, and the clients theirs."""
        shares = [*self._this_round, *self._next_round] if key is None else \
            [share for share in (self.clients.get(key),) if share is not None and share.queue]
        dropped = []
        for share in shares:
            kept, gone = deque(), []
            for request in share.queue:
                (gone if unwanted(request) else kept).append(request)
            if gone:
                share.queue = kept
                dropped += gone
                if not kept:
                    self._leave_turns(share)
        self._count -= len(dropped)
        return dropped

    def forget_idle(self, before: float) -> None:
        """Forget the clients with nothing queued or held that were last seen ``before``."""
        for key in [key for key, share in self.clients.items()
                    if not share.active() and share.last_seen < before]:
            del self.clients[key]

    def waiting_clients(self) -> int:
        return len(self._this_round) + len(self._next_round)

    def _leave_turns(self, share: ClientShare) -> None:
        try:
            self._this_round.remove(share)
        except ValueError:
            self._next_round.remove(share)
