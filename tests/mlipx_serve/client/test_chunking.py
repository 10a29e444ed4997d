"""How ``map`` cuts structures into requests: by the time the worker takes for them (a
cheap model a few a request, a model whose call costs the same for one as for many a full
chunk), a known number into enough requests to share out, a large structure alone, and
never two kinds of arrays in one."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlipx_serve.client.chunking import (
    CHUNK_ATOMS,
    GROWTH,
    MAX_CHUNK,
    MIN_CHUNKS,
    TURN,
    WINDOW,
    ChunkSizer,
    most_structures,
)
from mlipx_serve.client.mapping import _chunks


def answered(sizer: ChunkSizer, cost, rounds: int = 12) -> list[int]:
    """The budgets a map asks for while each chunk of the budget's atoms takes
    ``cost(atoms)`` seconds on the worker."""
    budgets = []
    for _ in range(rounds):
        budget = sizer.budget()
        budgets.append(budget)
        sizer.observe(max(budget, 32), cost(max(budget, 32)))  # (a structure has 32 atoms)
    return budgets


def test_before_any_reply_a_chunk_is_one_structure_then_it_grows_until_it_can_fit():
    sizer = ChunkSizer()
    assert sizer.budget() == 1
    sizer.observe(32, 0.003)
    assert sizer.budget() == GROWTH * 32  # one size seen: no line through it yet
    assert sizer.per_atom() is None


def test_a_cheap_model_gets_chunks_that_add_a_turn_of_work():
    per_atom = 1e-4  # EMT-like: 3.2 ms for 32 atoms, nothing fixed
    budgets = answered(ChunkSizer(), lambda atoms: per_atom * atoms)
    assert budgets[-1] == int(TURN / per_atom)  # 100 atoms: three 32-atom structures
    assert max(budgets[2:]) <= int(TURN / per_atom)  # (once a line is there)


def test_a_model_whose_call_costs_the_same_for_one_or_many_gets_full_chunks():
    budgets = answered(ChunkSizer(), lambda atoms: 0.02 + 1e-7 * atoms)  # a GPU's call
    assert budgets[-1] == CHUNK_ATOMS
    assert budgets[:3] == [1, 256, 2048]  # grown step by step, not guessed


def test_no_measurable_cost_per_atom_grows_the_chunks():
    sizer = ChunkSizer()
    sizer.observe(32, 0.004)
    sizer.observe(64, 0.003)  # noise: the larger one was faster
    assert sizer.budget() == GROWTH * 64


def test_the_fit_follows_a_model_that_gets_slower():
    sizer = ChunkSizer()
    answered(sizer, lambda atoms: 1e-5 * atoms)
    fast = sizer.budget()
    answered(sizer, lambda atoms: 1e-4 * atoms, rounds=WINDOW + 8)
    assert sizer.budget() < fast / 5


@pytest.mark.parametrize("total, size", [(1, 1), (MIN_CHUNKS, 1), (MIN_CHUNKS * 3, 3),
                                         (MIN_CHUNKS * 3 + 1, 4), (100_000, MAX_CHUNK),
                                         (None, MAX_CHUNK)])
def test_a_known_number_of_structures_makes_enough_requests_to_share_out(total, size):
    assert most_structures(total) == size


def cu(count: int = 1) -> Atoms:
    return bulk("Cu", cubic=True) * (count, 1, 1)


def test_chunks_keep_every_structure_once_in_order():
    given = [cu(1 + i % 3) for i in range(11)]
    chunks = list(_chunks(given, lambda: (1000, 4)))
    assert [len(chunk) for chunk in chunks] == [4, 4, 3]
    assert [index for chunk in chunks for index, _ in chunk] == list(range(11))
    assert all(atoms is given[index] for chunk in chunks for index, atoms in chunk)


def test_a_chunk_takes_structures_up_to_its_atoms_and_a_large_one_goes_alone():
    given = [cu(), cu(), cu(), cu(8), cu(), cu(20), cu()]  # 4 atoms each, 32, 80
    chunks = list(_chunks(given, lambda: (12, 10)))
    assert [[index for index, _ in chunk] for chunk in chunks] == [[0, 1, 2], [3], [4], [5],
                                                                   [6]]


def test_each_chunk_is_sized_by_the_limits_when_it_starts():
    budgets = iter([(4, 10), (8, 10), (100, 2), (100, 2)])
    chunks = list(_chunks([cu() for _ in range(7)], lambda: next(budgets)))
    assert [len(chunk) for chunk in chunks] == [1, 2, 2, 2]


def test_structures_that_carry_other_arrays_start_a_chunk_of_their_own():
    magnetic = cu()
    magnetic.set_initial_magnetic_moments(np.ones(4))
    given = [cu(), cu(), magnetic, magnetic.copy(), cu()]
    chunks = list(_chunks(given, lambda: (1000, 10)))
    assert [[index for index, _ in chunk] for chunk in chunks] == [[0, 1], [2, 3], [4]]


def test_an_iterator_is_read_as_the_chunks_are_taken():
    taken = []

    def structures():
        for i in range(10):
            taken.append(i)
            yield cu()

    chunks = _chunks(structures(), lambda: (1000, 3))
    next(chunks)
    assert taken == [0, 1, 2, 3]  # the fourth told the first chunk it was full


def test_answers_of_one_size_only_make_it_try_a_larger_one():
    sizer = ChunkSizer()
    sizer.observe(50, 0.005)
    for _ in range(WINDOW):  # long at one size: the earlier sizes no longer count
        sizer.observe(100, 0.01)
    assert sizer.per_atom() is None
    assert sizer.budget() == GROWTH * 100
