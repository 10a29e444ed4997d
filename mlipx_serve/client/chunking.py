"""How many structures go in one request of a map: as many as make a short turn.

The broker serves the scripts that share a model in turn, one request a turn
(protocol/mdp.md 6.1), so the time a request takes on the worker is how long another
script's single call may wait behind it. A map therefore sizes its chunks by time, from
what the worker reports (``seconds`` in each reply, protocol/ase-payload.md): a request
costs a fixed part (the call into the model, a GPU's launch) plus a part per atom, and a
chunk may add ``turn`` seconds of per-atom work to the fixed part that one structure pays
anyway: ``TURN`` while other scripts use the model, ``LONE_TURN`` while none does (the
map asks the broker), since each request costs the map, the broker and the worker some
time of their own. A cheap CPU model then takes a few structures a request, a GPU model
whose call costs the same for one structure as for many takes a full chunk.

Before any reply a chunk is one structure; then the budget grows eightfold with each size
answered until two sizes give a line to fit (the map sends its first two requests one at
a time, so that a line is there before the rest go out), and from there it follows the
fit through the sizes answered lately, never more than eight times the largest size seen,
so that it follows a model that gets slower or faster; whenever those are of one size
only, it grows once more to have a line again.
Without times (a worker that does not say them) chunks stay one structure. Pure
arithmetic: the map feeds it replies and asks it for the next chunk's budget.
"""

from __future__ import annotations

import statistics

TURN = 0.01  # seconds of work a chunk may add to what one of its structures costs
LONE_TURN = 0.05  # the same while no other script uses the model
CHUNK_ATOMS = 4096  # atoms in one request, at most (the data's own cost)
MAX_CHUNK = 64  # structures in one request, at most
MIN_CHUNKS = 8  # requests a known number of structures is split into, at least
WEIGHT = 0.2  # of a new time in the running mean of its size class
WINDOW = 512  # chunks answered, the most recent, whose size classes the fit goes by
GROWTH = 8  # times the largest size answered that the next chunk may hold, at most


class ChunkSizer:
    """Atoms for the next chunk of a map, learnt from the worker's times for chunks of
    several sizes: per power of two of atoms, a running mean of atoms and seconds."""

    def __init__(self, turn: float = TURN, most_atoms: int = CHUNK_ATOMS):
        self.turn = turn
        self.most_atoms = most_atoms
        self._means: dict[int, list[float]] = {}  # size class -> [atoms, seconds, when]
        self._answered = 0

    def observe(self, atoms: int, seconds: float) -> None:
        """A chunk of ``atoms`` atoms took ``seconds`` on the worker."""
        self._answered += 1
        mean = self._means.setdefault(atoms.bit_length(), [atoms, seconds, 0])
        mean[0] += (atoms - mean[0]) * WEIGHT
        mean[1] += (seconds - mean[1]) * WEIGHT
        mean[2] = self._answered

    def budget(self) -> int:
        """Atoms the next chunk may hold (its first structure goes in whatever its size)."""
        recent = self._recent()
        if not recent:
            return 1
        ceiling = min(self.most_atoms, GROWTH * int(max(atoms for atoms, _ in recent)))
        per_atom = self.per_atom()
        if per_atom is None or per_atom <= 0:  # (no line, or no cost per atom: grow)
            return ceiling
        return max(1, min(ceiling, int(self.turn / per_atom)))

    def per_atom(self) -> float | None:
        """Seconds per atom, the slope of the line through the sizes answered lately;
        None while those are of one size only."""
        recent = self._recent()
        if len(recent) < 2:
            return None
        atoms, seconds = zip(*recent, strict=True)
        return statistics.linear_regression(atoms, seconds).slope

    def _recent(self) -> list[tuple[float, float]]:
        return [(atoms, seconds) for atoms, seconds, when in self._means.values()
                if when > self._answered - WINDOW]


def most_structures(total: int | None) -> int:
    """Structures in one request, at most: ``MAX_CHUNK``, and of a known number of
    structures few enough for ``MIN_CHUNKS`` requests, so that several workers share them."""
    return MAX_CHUNK if total is None else max(1, min(MAX_CHUNK, -(-total // MIN_CHUNKS)))
