"""A long job keeps running where it runs when its partition moves (issue 14, defect 7).

After a rebalance, the partition's new owner reads a long job again that the previous
owner still runs, heartbeating its lease. Taking the job over would restart it from the
beginning on every rebalance; instead the new owner waits: for the job to end there (its
delivery is then a duplicate) or for the lease to lapse (the other worker died: then it
takes the job over). The other worker is played here by a StatusStore of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Settings, db
from conveyor.consumer.claims import HELD, Lease
from conveyor.consumer.context import JobContext
from conveyor.consumer.status import StatusStore
from conveyor.consumer.worker import Worker
from conveyor.errors import LeaseLostError
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.faults import raw
from tests.status_helpers import make_job
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


async def _publish(live: Settings, job_id: str) -> None:
    """The long job's message on the normal topic, as its producer sent it."""
    topic = Topology.from_settings(live).job_topic("normal")
    record = raw.envelope("long.job", b"{}", job_id=job_id, duration="long", key="entity-1")
    with Serde(live) as serde:
        value = serde.encode(JOB_ENVELOPE, topic, record)
    await asyncio.to_thread(
        raw.produce, live, topic, [(b"entity-1", value, raw.job_headers(record))]
    )


def _worker(live: Settings, runs: list[str]) -> Worker:
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)

    @worker.handler("long.job", duration="long")
    async def long_job(ctx: JobContext, payload: Any) -> str:
        runs.append(ctx.job_id)
        return "done here"

    return worker


@contextlib.asynccontextmanager
async def other_worker_runs(
    live: Settings, lease_seconds: float
) -> AsyncIterator[tuple[StatusStore, Lease]]:
    """Another worker's claim of a long job, under a lease of ``lease_seconds``."""
    pool = await db.create_pool(live, min_size=1, max_size=2)
    try:
        other = StatusStore(pool, worker_id="other-worker", lease_seconds=lease_seconds)
        lease = await other.claim(make_job(priority="normal", duration="long"))
        assert isinstance(lease, Lease)
        yield other, lease
    finally:
        await pool.close()


async def test_a_delivery_of_a_long_job_running_elsewhere_waits_and_never_restarts_it(
    live: Settings,
) -> None:
    runs: list[str] = []
    worker = _worker(live, runs)
    async with other_worker_runs(live, lease_seconds=60.0) as (other, lease), running(worker):
        await _publish(live, lease.job_id)
        # The delivery holds a slot while it waits; the job stays the other worker's.
        await eventually(lambda: worker.in_flight == 1, what="the delivery to wait")
        assert await other.heartbeat(lease)  # still the other worker's lease
        assert runs == []
        await other.complete_alone(lease, "done there")
        await eventually(lambda: worker.in_flight == 0, what="the delivery to end")
    assert runs == []  # never restarted here
    assert worker.stats.duplicates_skipped == 1


async def test_a_long_job_whose_worker_died_is_taken_over_once_its_lease_lapses(
    live: Settings,
) -> None:
    runs: list[str] = []
    worker = _worker(live, runs)
    # The other worker claims with a 3 s lease and then never heartbeats: it died.
    async with other_worker_runs(live, lease_seconds=3.0) as (other, lease), running(worker):
        await _publish(live, lease.job_id)
        await eventually(lambda: runs == [lease.job_id], timeout=60, what="the takeover")
        with pytest.raises(LeaseLostError):
            await other.complete_alone(lease, "too late")  # fenced: the job moved on


async def test_a_claim_of_a_short_job_still_takes_over_and_a_long_one_reports_held(
    live: Settings,
) -> None:
    pool = await db.create_pool(live, min_size=1, max_size=2)
    try:
        async with other_worker_runs(live, lease_seconds=60.0) as (_other, lease):
            here = StatusStore(pool, worker_id="this-worker")
            long_again = make_job(lease.job_id, priority="normal", duration="long")
            assert await here.claim(long_again) == HELD
            short = make_job(lease.job_id, priority="normal", duration="short")
            taken = await here.claim(short)
            assert isinstance(taken, Lease)
            assert taken.epoch == lease.epoch + 1
    finally:
        await pool.close()
