"""The metrics every job updates, kept as plain numbers and exposed by a collector.

``prometheus_client`` takes a lock for each increment and each histogram observation
(a sum and a bucket, each under its own lock), and a job made seven such updates: its
start, its wait, its run time, its completion and the in-flight gauge up and down.
Under the profiler that was ``MutexValue.inc``, 5% of the worker's samples. These
series are only ever updated from the worker's event loop, so they are plain attributes
here; ``HotSeries`` turns them into the same families (``conveyor_jobs_started``,
``conveyor_jobs_completed``, ``conveyor_job_duration_seconds``,
``conveyor_job_wait_seconds``, ``conveyor_jobs_in_flight``) when ``/metrics`` is read,
from the server's thread. A reading taken while the loop updates a histogram may be one
observation behind in one of its numbers; the next reading has it.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


class Count:
    """A counter (or, with :meth:`dec`, a gauge) updated from one thread."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Buckets:
    """A histogram with fixed upper bounds (and +Inf) updated from one thread."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus' ``le`` buckets: each counts every observation up to its bound."""
        counts = list(self.counts)  # one copy, so the buckets agree with each other
        total = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            buckets.append((_le(bound), float(total)))
        return buckets


@dataclasses.dataclass(frozen=True, slots=True)
class JobSeries:
    """The series one job of a (type, priority) updates on its way."""

    started: Count
    completed: Count
    duration: Buckets
    wait: Buckets


class HotSeries(Collector):
    """Holds the per-job series of one worker and exposes them as Prometheus families.

    Args:
        duration_buckets: Upper bounds of ``conveyor_job_duration_seconds``.
        wait_buckets: Upper bounds of ``conveyor_job_wait_seconds``.
    """

    def __init__(self, *, duration_buckets: Sequence[float], wait_buckets: Sequence[float]):
        self._duration_buckets = tuple(duration_buckets)
        self._wait_buckets = tuple(wait_buckets)
        self._jobs: dict[tuple[str, str], JobSeries] = {}
        self._in_flight: dict[str, Count] = {}

    def job(self, labels: tuple[str, str]) -> JobSeries:
        """The series of a (type, priority), made on first use."""
        found = self._jobs.get(labels)
        if found is None:
            found = self._jobs[labels] = JobSeries(
                started=Count(),
                completed=Count(),
                duration=Buckets(self._duration_buckets),
                wait=Buckets(self._wait_buckets),
            )
        return found

    def in_flight(self, priority: str) -> Count:
        """The in-flight gauge of ``priority``, made on first use."""
        found = self._in_flight.get(priority)
        if found is None:
            found = self._in_flight[priority] = Count()
        return found

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily | GaugeMetricFamily]:
        labels = ["type", "priority"]
        jobs = list(self._jobs.items())
        started = CounterMetricFamily(
            "conveyor_jobs_started", "Job attempts started.", labels=labels
        )
        completed = CounterMetricFamily("conveyor_jobs_completed", "Jobs completed.", labels=labels)
        for values, series in jobs:
            started.add_metric(values, series.started.value, created=series.started.created)
            completed.add_metric(values, series.completed.value, created=series.completed.created)
        yield started
        yield completed
        yield _histogram(
            "conveyor_job_duration_seconds",
            "Handler run time of one attempt.",
            [(values, series.duration) for values, series in jobs],
        )
        yield _histogram(
            "conveyor_job_wait_seconds",
            "From submit (or the requested start time) to the first attempt's start.",
            [(values, series.wait) for values, series in jobs],
        )
        in_flight = GaugeMetricFamily(
            "conveyor_jobs_in_flight", "Jobs running now.", labels=["priority"]
        )
        for priority, count in list(self._in_flight.items()):
            in_flight.add_metric([priority], count.value)
        yield in_flight


def _le(bound: float) -> str:
    """An ``le`` label as prometheus_client writes it: ``0.005``, ``300.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(bound)


def _histogram(
    name: str, documentation: str, series: list[tuple[tuple[str, str], Buckets]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["type", "priority"])
    for values, buckets in series:
        family.add_metric(list(values), buckets.cumulative(), buckets.sum)
        labels = {"type": values[0], "priority": values[1]}
        family.samples.append(Sample(f"{name}_created", labels, buckets.created))
    return family


__all__ = ["Buckets", "Count", "HotSeries", "JobSeries"]
