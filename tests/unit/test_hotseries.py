"""``hotseries``: the per-job metrics expose what prometheus_client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from conveyor.observability.hotseries import HotSeries
from conveyor.observability.metrics import DURATION_BUCKETS, WAIT_BUCKETS


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_the_families_match_prometheus_clients_for_the_same_updates() -> None:
    ours = CollectorRegistry()
    hot = HotSeries(duration_buckets=DURATION_BUCKETS, wait_buckets=WAIT_BUCKETS)
    ours.register(hot)
    theirs = CollectorRegistry()
    job = ("type", "priority")
    started = Counter("conveyor_jobs_started", "s", job, registry=theirs)
    completed = Counter("conveyor_jobs_completed", "c", job, registry=theirs)
    duration = Histogram(
        "conveyor_job_duration_seconds", "d", job, buckets=DURATION_BUCKETS, registry=theirs
    )
    wait = Histogram("conveyor_job_wait_seconds", "w", job, buckets=WAIT_BUCKETS, registry=theirs)
    in_flight = Gauge("conveyor_jobs_in_flight", "i", ("priority",), registry=theirs)

    # Values on a bucket's bound, between bounds, past the last one, and zero.
    values = [0.0, 0.001, 0.004, 0.005, 0.3, 1.0, 299.0, 300.0, 5000.0]
    for labels in (("email.send", "normal"), ("other", "critical")):
        series = hot.job(labels)
        for value in values:
            series.started.inc()
            series.duration.observe(value)
            series.wait.observe(value / 2)
            started.labels(*labels).inc()
            duration.labels(*labels).observe(value)
            wait.labels(*labels).observe(value / 2)
        series.completed.inc(3)
        completed.labels(*labels).inc(3)
    for _ in range(4):
        hot.in_flight("normal").inc()
        in_flight.labels("normal").inc()
    hot.in_flight("normal").dec()
    in_flight.labels("normal").dec()

    assert _samples(ours) == _samples(theirs)
    names = {s.name for family in ours.collect() for s in family.samples}
    assert "conveyor_jobs_started_created" in names
    assert "conveyor_job_wait_seconds_created" in names


def test_every_family_is_exposed_before_any_job() -> None:
    registry = CollectorRegistry()
    registry.register(HotSeries(duration_buckets=(1.0,), wait_buckets=(1.0,)))
    assert {(f.name, f.type) for f in registry.collect()} == {
        ("conveyor_jobs_started", "counter"),
        ("conveyor_jobs_completed", "counter"),
        ("conveyor_job_duration_seconds", "histogram"),
        ("conveyor_job_wait_seconds", "histogram"),
        ("conveyor_jobs_in_flight", "gauge"),
    }
