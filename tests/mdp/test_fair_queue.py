"""The fair queue on its own (mdp/fair_queue.py): clients served in turn, each client's
requests in order, nothing lost; and the identity convention that says which client a
connection belongs to (mdp/identities.py)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from mdp.fair_queue import ClientShare, FairQueue
from mdp.identities import PREFIX, client_of, connection_identity, describe_client


@dataclass(eq=False)
class Item:
    share: ClientShare
    number: int


def queue_of(*clients: bytes) -> tuple[FairQueue, dict[bytes, ClientShare]]:
    queue = FairQueue()
    return queue, {client: queue.share(client, 0.0) for client in clients}


def add(queue: FairQueue, share: ClientShare, number: int) -> Item:
    item = Item(share, number)
    queue.append(item)
    return item


def test_clients_take_turns_and_each_keeps_its_order():
    queue, shares = queue_of(b"a", b"b", b"c")
    for number in range(4):
        add(queue, shares[b"a"], number)
    add(queue, shares[b"b"], 10)
    add(queue, shares[b"c"], 20)
    add(queue, shares[b"b"], 11)
    taken = [queue.popleft() for _ in range(len(queue))]
    assert [(item.share.key, item.number) for item in taken] == [
        (b"a", 0), (b"b", 10), (b"c", 20), (b"a", 1), (b"b", 11), (b"a", 2), (b"a", 3)]
    assert len(queue) == 0 and queue.waiting_clients() == 0


def test_a_client_that_comes_goes_before_those_that_had_their_turn_in_this_round():
    queue, shares = queue_of(b"map", b"call", b"other-map")
    add(queue, shares[b"map"], 0)
    assert queue.popleft().number == 0  # the map's first request: now in a worker's hands
    for number in range(1, 4):
        add(queue, shares[b"map"], number)
    add(queue, shares[b"call"], 10)  # a single call: no turn yet in this round
    assert queue.popleft().number == 10  # so it waited only for the request in hand
    add(queue, shares[b"call"], 11)  # it had its turn: the next round
    add(queue, shares[b"other-map"], 20)
    assert [queue.popleft().number for _ in range(len(queue))] == [20, 1, 11, 2, 3]


def test_a_request_put_back_goes_first_and_its_client_before_the_others():
    queue, shares = queue_of(b"a", b"b")
    first = add(queue, shares[b"a"], 0)
    add(queue, shares[b"b"], 10)
    add(queue, shares[b"a"], 1)
    assert queue.popleft() is first
    back = add(queue, shares[b"b"], 11)
    queue.drop(lambda item: item is back)  # (so that b has one waiting)
    queue.appendleft(first)
    assert [item.number for item in queue] == [0, 1, 10]
    assert [queue.popleft().number for _ in range(3)] == [0, 10, 1]


def test_dropping_keeps_the_rest_in_order_and_a_client_emptied_leaves_the_turns():
    queue, shares = queue_of(b"a", b"b")
    for number in range(4):
        add(queue, shares[b"a"], number)
    b = add(queue, shares[b"b"], 10)
    dropped = queue.drop(lambda item: item.number % 2 == 0, b"a")
    assert [item.number for item in dropped] == [0, 2]
    assert queue.drop(lambda item: True, b"nobody") == []
    assert queue.drop(lambda item: item.number >= 10) == [b]
    assert [item.number for item in queue] == [1, 3]
    assert len(queue) == 2 and queue.waiting_clients() == 1
    assert [queue.popleft().number for _ in range(2)] == [1, 3]


def test_idle_clients_are_forgotten_after_a_while_and_active_ones_never():
    queue, shares = queue_of(b"idle", b"busy", b"waiting")
    shares[b"busy"].in_flight = 1
    add(queue, shares[b"waiting"], 0)
    queue.share(b"idle", 5.0)  # seen again at 5
    queue.forget_idle(before=5.0)
    assert set(queue.clients) == {b"idle", b"busy", b"waiting"}
    queue.forget_idle(before=5.5)
    assert set(queue.clients) == {b"busy", b"waiting"}


operations = st.lists(st.one_of(st.tuples(st.just("add"), st.sampled_from("abcd")),
                                st.tuples(st.just("take"), st.none()),
                                st.tuples(st.just("drop"), st.sampled_from("abcd"))),
                      max_size=120)


@given(operations)
def test_no_client_is_served_twice_while_another_waits_all_along(steps):
    """Between two turns of one client, every other client that waited all that time
    had a turn; each client's requests come out in the order they went in; nothing is
    lost or made up; the count is right."""
    queue = FairQueue()
    numbers = itertools.count()
    waiting_since: dict[str, int] = {}  # client -> the take after which it last queued
    last_taken: dict[str, int] = {}  # client -> the take that last served it
    expected: dict[str, list[int]] = {}
    takes = 0
    for action, client in steps:
        if action == "add":
            if not expected.get(client):
                waiting_since[client] = takes
            number = next(numbers)
            queue.append(Item(queue.share(client.encode(), 0.0), number))
            expected.setdefault(client, []).append(number)
        elif action == "drop":
            dropped = queue.drop(lambda item: item.number % 3 == 0, client.encode())
            assert all(item.share.key == client.encode() for item in dropped)
            expected[client] = [n for n in expected.get(client, []) if n % 3]
        elif len(queue):
            item = queue.popleft()
            takes += 1
            client = item.share.key.decode()
            assert item.number == expected[client].pop(0), "a client's order broken"
            for other, since in waiting_since.items():
                if other != client and expected.get(other) and client in last_taken \
                        and since < last_taken[client]:
                    assert last_taken.get(other, -1) > last_taken[client], \
                        f"{client} served twice while {other} waited"
            last_taken[client] = takes
        assert len(queue) == sum(map(len, expected.values()))
        assert queue.waiting_clients() == sum(1 for numbers_ in expected.values() if numbers_)
    assert sorted(item.number for item in queue) == sorted(
        itertools.chain.from_iterable(expected.values()))


def test_a_connection_names_its_process_and_the_broker_reads_the_client_back():
    first, second = connection_identity(), connection_identity()
    assert first != second and len(first) <= 255
    assert client_of(b"\x01" + first) == client_of(second) == first[:first.rindex(b"/")]
    described = describe_client(client_of(first))
    assert described["pid"] == os.getpid() and described["host"]
    assert client_of(b"\x01plain") == b"\x01plain"  # any other identity: its own client
    assert client_of(b"\x01share:/7") == b"\x01share:/7"  # no client named
    assert describe_client(b"\x01plain") == {"client": "plain", "host": None, "pid": None}
    assert describe_client(PREFIX + b"made-up") == {"client": "made-up", "host": None,
                                                    "pid": None}


def test_a_forked_child_is_a_client_of_its_own():
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its identity, through the pipe, and out
        os.write(writer, connection_identity())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 300)
    os.close(reader)
    os.waitpid(pid, 0)
    assert client_of(child) != client_of(connection_identity())
    assert describe_client(client_of(child))["pid"] == pid
