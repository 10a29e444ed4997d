"""How long requests wait in a service's queue and how long its workers take for them, kept
by the broker's core as histograms (cumulative, for Prometheus) with a short history (for
the last minute's rates and quantiles, for people). Pure bookkeeping: observations and the
time in, numbers out.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

# Bucket bounds in seconds: from a cheap model's few milliseconds to a slow model's minutes.
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
          30.0, 60.0, 300.0)
WINDOW = 60.0  # seconds of history for the recent figures
EVERY = 10.0  # seconds between the snapshots that history keeps


@dataclass
class Histogram:
    """Observations counted in buckets (``counts[i]``: those <= ``BOUNDS[i]``, the last one
    the rest), with their sum, as Prometheus' histograms have them."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram([a - b for a, b in zip(self.counts, earlier.counts, strict=True)],
                         self.total - earlier.total)

    def copy(self) -> Histogram:
        return Histogram(list(self.counts), self.total)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, interpolated within its bucket; None without observations."""
        count = self.count
        if not count:
            return None
        rank, seen = q * count, 0
        for index, in_bucket in enumerate(self.counts):
            if in_bucket and seen + in_bucket >= rank:
                low = BOUNDS[index - 1] if index else 0.0
                high = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1]
                return low + (high - low) * (rank - seen) / in_bucket
            seen += in_bucket
        return BOUNDS[-1]


@dataclass
class Snapshot:
    at: float
    wait: Histogram
    work: Histogram
    units: int


@dataclass
class ServiceTimings:
    """One service's queue waits and work times (the worker's own, where its reply says,
    else from the request handed to a worker to its last reply), and the units of work
    (``Request.weight``) served, with their history."""

    wait: Histogram = field(default_factory=Histogram)
    work: Histogram = field(default_factory=Histogram)
    units: int = 0
    history: deque = field(default_factory=deque)  # Snapshots, oldest first

    def remember(self, now: float) -> None:
        """Take a snapshot every ``EVERY`` seconds; keep those of the last ``WINDOW``."""
        if self.history and now - self.history[-1].at < EVERY:
            return
        self.history.append(Snapshot(now, self.wait.copy(), self.work.copy(), self.units))
        while len(self.history) > 1 and now - self.history[1].at >= WINDOW:
            self.history.popleft()

    def recent(self, now: float) -> dict:
        """Units of work per second, and the median and p95 of queue waits and work times,
        since the oldest snapshot (about the last minute; None where nothing happened)."""
        since = self.history[0] if self.history else Snapshot(now, Histogram(), Histogram(), 0)
        seconds = now - since.at
        wait, work = self.wait.minus(since.wait), self.work.minus(since.work)
        return {"seconds": seconds,
                "units_per_second": (self.units - since.units) / seconds if seconds > 0 else 0.0,
                "wait_median": wait.quantile(0.5), "wait_p95": wait.quantile(0.95),
                "work_median": work.quantile(0.5), "work_p95": work.quantile(0.95)}
