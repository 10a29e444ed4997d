"""Queue waits and work times as the broker keeps them (mdp/timings.py): histograms with
Prometheus' buckets, and the last minute's rate and quantiles from their history."""

from __future__ import annotations

import pytest

from mdp.timings import BOUNDS, EVERY, WINDOW, Histogram, ServiceTimings


def test_a_histogram_counts_each_observation_in_its_bucket_and_sums_them():
    histogram = Histogram()
    for seconds in (0.0005, 0.001, 0.003, 0.003, 1000.0):
        histogram.observe(seconds)
    assert histogram.counts[0] == 2  # (<= 1 ms: bounds are inclusive, as Prometheus' le)
    assert histogram.counts[BOUNDS.index(0.005)] == 2 and histogram.counts[-1] == 1
    assert histogram.count == 5 and histogram.total == pytest.approx(1000.0075)


def test_quantiles_fall_in_their_bucket_and_none_without_observations():
    histogram = Histogram()
    assert histogram.quantile(0.5) is None
    for _ in range(90):
        histogram.observe(0.004)  # (2.5, 5] ms
    for _ in range(10):
        histogram.observe(0.2)  # (100, 250] ms
    assert 0.0025 < histogram.quantile(0.5) <= 0.005
    assert 0.1 < histogram.quantile(0.95) <= 0.25


def test_the_recent_figures_cover_about_the_last_minute():
    timings = ServiceTimings()
    now = 0.0
    while now <= 3 * WINDOW:  # a slow start, then a fast minute
        slow = now < 2 * WINDOW
        timings.wait.observe(0.2 if slow else 0.002)
        timings.work.observe(0.5 if slow else 0.01)
        timings.units += 1 if slow else 10
        timings.remember(now)
        now += 1.0
    recent = timings.recent(now)
    assert WINDOW <= recent["seconds"] <= WINDOW + EVERY + 1
    assert recent["units_per_second"] == pytest.approx(10, rel=0.2)
    assert recent["wait_median"] <= 0.0025 and recent["work_p95"] <= 0.025
    assert len(timings.history) <= WINDOW / EVERY + 2
