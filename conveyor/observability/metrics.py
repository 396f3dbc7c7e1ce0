"""Prometheus metrics of workers and producers, all named ``conveyor_*``.

A worker's metrics live in a registry of its own (``WorkerMetrics.registry``), so two
workers in one process count apart; its ``/metrics`` serves that registry followed by
the process-wide default one, which holds the producer's counter and the process
collectors (CPU, memory, file descriptors).

Labels are bounded: the job type (a type no handler is registered for is counted as
``other``), the priority, and a failure's reason. Never a job id or a key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from conveyor.observability.hotseries import Count, HotSeries, JobSeries

#: The type label of jobs whose type has no handler here.
OTHER_TYPE = "other"

#: Seconds; handlers range from a millisecond to many minutes.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Seconds from submit to start; the goal is well under 50 ms.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

#: Seconds from a scheduled job's due time to its release; the goal is under 1 s at p99.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_JOB = ("type", "priority")

#: Jobs handed to the broker by producers of this process (the default registry).
SUBMITTED = Counter(
    "conveyor_jobs_submitted", "Jobs queued for delivery by producers of this process.", _JOB
)


class WorkerMetrics:
    """The metrics one worker records.

    Args:
        registry: Where the metrics are registered; a new registry by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._known_types: frozenset[str] = frozenset()
        r = self.registry
        # Started, completed, run time, wait and in flight: every job updates them, so
        # they are plain numbers exposed by a collector (see hotseries).
        self._hot = HotSeries(duration_buckets=DURATION_BUCKETS, wait_buckets=WAIT_BUCKETS)
        r.register(self._hot)
        self.failed = Counter(
            "conveyor_jobs_failed",
            "Jobs that ended failed (dead-lettered), by reason.",
            (*_JOB, "reason"),
            registry=r,
        )
        self.retried = Counter(
            "conveyor_jobs_retried", "Failed attempts that were retried.", _JOB, registry=r
        )
        self.dead_lettered = Counter(
            "conveyor_jobs_dead_lettered",
            "Messages sent to the DLQ topic (undecodable ones included).",
            ("priority",),
            registry=r,
        )
        self.cancelled = Counter("conveyor_jobs_cancelled", "Jobs cancelled.", _JOB, registry=r)
        self.duplicates_skipped = Counter(
            "conveyor_jobs_duplicates_skipped",
            "Deliveries of jobs that were already final.",
            _JOB,
            registry=r,
        )
        self.queue_depth = Gauge(
            "conveyor_queue_depth",
            "Consumer lag of this worker's partitions: messages not yet committed.",
            ("priority",),
            registry=r,
        )
        self.backlog = Gauge(
            "conveyor_backlog",
            "Jobs of this worker's partitions not finished: not read yet, or read and "
            "unfinished. Unlike the lag, finished jobs behind a long one are not counted.",
            ("priority",),
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "conveyor_assigned_partitions",
            "Job topic partitions this worker holds.",
            ("priority",),
            registry=r,
        )
        self.dlq_pending = Gauge(
            "conveyor_dlq_pending", "Rows in job_dlq not replayed yet.", registry=r
        )
        self.scheduled_pending = Gauge(
            "conveyor_scheduled_jobs",
            "Delayed and run_at jobs stored and not released yet (scheduled_jobs rows).",
            registry=r,
        )
        self.release_lateness = Histogram(
            "conveyor_scheduled_release_lateness_seconds",
            "From a scheduled job's due time to the broker's ack of its release.",
            ("priority",),
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.scheduled_released = Counter(
            "conveyor_scheduled_released",
            "Scheduled jobs released to their priority topic.",
            ("priority",),
            registry=r,
        )

    def know_types(self, job_types: Iterable[str]) -> None:
        """Sets the job types counted under their own name; others count as ``other``."""
        self._known_types = frozenset(job_types)

    def series(self, job_type: str, priority: str) -> JobSeries:
        """The per-job series of a (type, priority): started, completed, run time, wait.

        Update them only from the worker's event loop (see ``hotseries``).
        """
        return self._hot.job(self.labels(job_type, priority))  # bounded labels

    def in_flight_of(self, priority: str) -> Count:
        """The in-flight gauge of ``priority``; updated only from the event loop."""
        return self._hot.in_flight(priority)

    def labels(self, job_type: str, priority: str) -> tuple[str, str]:
        """The bounded (type, priority) label values of a job."""
        return (job_type if job_type in self._known_types else OTHER_TYPE, priority)

    def observe_start(
        self,
        job_type: str,
        priority: str,
        *,
        attempt: int,
        submitted_at: dt.datetime,
        not_before: dt.datetime | None,
    ) -> None:
        """Counts an attempt's start; a first attempt also records its wait."""
        series = self.series(job_type, priority)
        series.started.inc()
        if attempt == 1:
            since = not_before if not_before is not None else submitted_at
            waited = (dt.datetime.now(dt.UTC) - since).total_seconds()
            series.wait.observe(max(0.0, waited))

    def render(self) -> bytes:
        """The text exposition of this worker's metrics and the process-wide ones."""
        return generate_latest(self.registry) + generate_latest(REGISTRY)


def metric_names() -> frozenset[str]:
    """Every sample name workers and producers expose, with suffixes (``_total``, ``_bucket``)."""
    names: set[str] = set()
    for registry in (WorkerMetrics().registry, REGISTRY):
        for family in registry.collect():
            if family.name.startswith("conveyor_"):
                names.update(_sample_names(family.name, family.type))
    return frozenset(names)


def _sample_names(name: str, kind: str) -> tuple[str, ...]:
    if kind == "counter":
        return (f"{name}_total", f"{name}_created")
    if kind == "histogram":
        return (f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created")
    return (name,)
