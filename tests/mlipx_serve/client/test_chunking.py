"""How ``map`` cuts structures into requests: small ones together, large ones alone, a
known number into enough requests to share out, and never two kinds of arrays in one."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlipx_serve.client.mapping import (
    CHUNK_ATOMS,
    MAX_CHUNK,
    MIN_CHUNKS,
    _chunks,
    chunk_size_for,
)


def test_small_structures_go_together_and_large_ones_alone():
    assert chunk_size_for(2) == MAX_CHUNK
    assert chunk_size_for(CHUNK_ATOMS // 8) == 8
    assert chunk_size_for(CHUNK_ATOMS) == 1
    assert chunk_size_for(100_000) == 1
    assert chunk_size_for(0) == MAX_CHUNK  # an empty structure costs next to nothing


@pytest.mark.parametrize("total, size", [(1, 1), (MIN_CHUNKS, 1), (MIN_CHUNKS * 3, 3),
                                         (MIN_CHUNKS * 3 + 1, 4), (100_000, MAX_CHUNK)])
def test_a_known_number_of_structures_makes_enough_requests_to_share_out(total, size):
    assert chunk_size_for(8, total) == size


def cu(count: int = 1) -> Atoms:
    return bulk("Cu", cubic=True) * (count, 1, 1)


def test_chunks_keep_every_structure_once_in_order():
    given = [cu(1 + i % 3) for i in range(11)]
    chunks = list(_chunks(given, lambda atoms: 4))
    assert [len(chunk) for chunk in chunks] == [4, 4, 3]
    assert [index for chunk in chunks for index, _ in chunk] == list(range(11))
    assert all(atoms is given[index] for chunk in chunks for index, atoms in chunk)


def test_each_chunk_has_the_size_its_first_structure_calls_for():
    given = [cu(), cu(), cu(), cu(8), cu(), cu()]
    sizes = {4: 2, 32: 1}  # by atom count
    chunks = list(_chunks(given, lambda atoms: sizes[len(atoms)]))
    assert [[index for index, _ in chunk] for chunk in chunks] == [[0, 1], [2, 3], [4, 5]]


def test_structures_that_carry_other_arrays_start_a_chunk_of_their_own():
    magnetic = cu()
    magnetic.set_initial_magnetic_moments(np.ones(4))
    given = [cu(), cu(), magnetic, magnetic.copy(), cu()]
    chunks = list(_chunks(given, lambda atoms: 10))
    assert [[index for index, _ in chunk] for chunk in chunks] == [[0, 1], [2, 3], [4]]


def test_an_iterator_is_read_as_the_chunks_are_taken():
    taken = []

    def structures():
        for i in range(10):
            taken.append(i)
            yield cu()

    chunks = _chunks(structures(), lambda atoms: 3)
    next(chunks)
    assert taken == [0, 1, 2, 3]  # the fourth told the first chunk it was full
