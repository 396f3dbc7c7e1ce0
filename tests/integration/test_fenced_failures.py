"""A worker that lost its job publishes no retry and no dead letter for it (issue 14,
defect 9): the failure's publish happens only while the lease is provably held."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest

from conveyor import JobContext, PermanentError, Producer, Settings, Worker
from conveyor.jobstore import JobStore
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running


@pytest.mark.parametrize("failure", ["retry", "dead"])
async def test_a_fenced_worker_publishes_neither_a_retry_nor_a_dead_letter(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any], failure: str
) -> None:
    """While the handler runs, another worker takes the job over (its claim bumps the
    lease epoch, as a takeover after a rebalance does). The handler then fails: this
    worker must learn it lost the lease before it publishes, or its retry record (or
    its DLQ record, and the JobFailed after it) forks the chain the new owner continues."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    schema = f'"{live.database_schema}"'

    @worker.handler("taken.over")
    async def taken_over(ctx: JobContext, payload: Any) -> None:
        # A short job runs unclaimed until it reports progress, touches ctx.db or runs
        # past 50 ms: this claims it here, so there is a lease for the new owner to take.
        await ctx.report_progress(1, "started")
        await db.execute(
            f"UPDATE {schema}.jobs SET lease_owner = 'the-new-owner', "
            "lease_epoch = lease_epoch + 1 WHERE job_id = $1",
            ctx.job_id,
        )
        if failure == "dead":
            raise PermanentError("card declined")
        raise RuntimeError("transient")

    with Producer(live) as producer:
        job_id = producer.submit("taken.over", {})
    async with running(worker):
        await eventually(lambda: worker.stats.fenced == 1, what="the failure to be fenced")
        loop = worker._loop
        assert loop is not None
        assert loop._publisher._core.stats.submitted == 0, "a fenced worker published"
        async with JobStore(live) as store:
            status = await store.status(job_id)
        assert status.state == "processing"  # still the new owner's
        # An observation window, not a wait for a result: nothing reaches the DLQ.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(eventually(lambda: worker.stats.dead_lettered > 0), 2.0)
    assert (worker.stats.retried, worker.stats.dead_lettered) == (0, 0)
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.job_dlq") == 0
