"""The busy signal payment jobs leave behind: back-to-back jobs saturate a process, a steady pace does not."""

from __future__ import annotations

import math

import pytest

from app.services.load import ProcessLoad


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_jobs(load: ProcessLoad, ticks: Ticks, *, count: int, job: float, pause: float) -> None:
    for _ in range(count):
        with load.running():
            ticks.now += job
        ticks.now += pause


def test_an_idle_process_is_not_busy() -> None:
    ticks = Ticks()
    load = ProcessLoad(monotonic=ticks)
    assert load.busy_fraction() == 0.0
    assert not load.saturated()


def test_jobs_back_to_back_saturate_the_process_and_a_quiet_moment_ends_it() -> None:
    ticks = Ticks()
    load = ProcessLoad(monotonic=ticks)
    # A backlog: 5 ms jobs, 5 ms for Celery to hand over the next one, for 3 s.
    run_jobs(load, ticks, count=300, job=0.005, pause=0.005)
    busy = load.busy_fraction()
    assert busy == pytest.approx(1 - math.exp(-3), abs=0.01)
    assert load.saturated()
    ticks.now += 0.3  # no job for 0.3 s: the backlog is gone
    assert not load.saturated()
    # What was there fades; the first 25 ms after the last job still counted as busy.
    assert load.busy_fraction() == pytest.approx(busy * math.exp(-0.3) + math.exp(-0.275) - math.exp(-0.3), abs=0.01)


def test_a_steady_pace_with_pauses_longer_than_the_gap_is_not_saturation() -> None:
    ticks = Ticks()
    load = ProcessLoad(monotonic=ticks)
    run_jobs(load, ticks, count=300, job=0.005, pause=0.045)  # 20 jobs/s, each followed by 45 ms of nothing
    assert 0.5 < load.busy_fraction() < 0.7  # 5 ms of job + 25 ms of gap out of every 50 ms
    assert not load.saturated()


def test_a_job_still_running_counts_as_busy_while_it_runs() -> None:
    ticks = Ticks()
    load = ProcessLoad(monotonic=ticks)
    with load.running():
        ticks.now += 2.0
        assert load.busy_fraction() == pytest.approx(1 - math.exp(-2), abs=0.01)
        assert load.saturated()
    ticks.now += 5.0
    assert load.busy_fraction() < 0.01
