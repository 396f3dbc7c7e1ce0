"""A short job hands its key to the key's next job when its handler returns.

Its completion is then written while the next job runs. If that write fails, the job
goes back to its key's mailbox and runs again when the key is free: two jobs of one key
never run at once, and none is lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from conveyor import Producer, Settings
from conveyor.consumer.context import JobContext
from conveyor.consumer.job import JobMessage
from conveyor.consumer.unclaimed import UnclaimedStore
from conveyor.consumer.worker import Worker
from conveyor.jobstore import JobStore
from tests.worker_helpers import TEST_OPTIONS, KeyWatch, eventually, prepare, running


class HeldWrite:
    """Holds back the first unclaimed completion written until ``let_write`` is set."""

    def __init__(self, monkeypatch: Any) -> None:
        self.held = asyncio.Event()
        self.let_write = asyncio.Event()
        complete = UnclaimedStore.complete

        async def held_complete(
            store: UnclaimedStore, job: JobMessage, result: str, started_at: dt.datetime
        ) -> str | None:
            if not self.held.is_set():
                self.held.set()
                await self.let_write.wait()
            return await complete(store, job, result, started_at)

        monkeypatch.setattr(UnclaimedStore, "complete", held_complete)


def key_worker(live: Settings, watch: KeyWatch, concurrency: int = 4) -> Worker:
    """A worker whose ``key.step`` handler runs through ``watch``."""
    worker = Worker(live, priorities=["normal"], concurrency=concurrency, options=TEST_OPTIONS)

    @worker.handler("key.step")
    async def step(ctx: JobContext, payload: dict[str, Any]) -> None:
        await watch.run(int(payload["n"]))

    return worker


async def test_the_keys_next_job_starts_while_the_first_ones_completion_is_written(
    settings: Settings, schema_registry_url: str, monkeypatch: Any
) -> None:
    """The first job's completion is held back; the key's second job runs meanwhile, and
    both complete once the write goes through."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    watch = KeyWatch(0.01)
    worker = key_worker(live, watch)
    write = HeldWrite(monkeypatch)

    with Producer(live) as producer:
        ids = [producer.submit("key.step", {"n": n}, key="entity-1") for n in range(2)]
    async with JobStore(live) as store, running(worker):
        await asyncio.wait_for(write.held.wait(), 60)
        await eventually(lambda: watch.runs == [0, 1], timeout=30, what="the second job run")
        assert (await store.status(ids[0])).state != "complete"  # its write is still held
        write.let_write.set()

        async def both_complete() -> bool:
            return [(await store.status(i)).state for i in ids] == ["complete"] * 2

        await eventually(both_complete, timeout=30, what="both jobs complete")
    assert watch.most == 1


async def test_a_completion_that_fails_after_the_hand_off_runs_again_when_the_key_is_free(
    settings: Settings, schema_registry_url: str, monkeypatch: Any
) -> None:
    """The first two completion writes fail as an outage would. Those jobs wait out the
    backoff, go back to the key's mailbox and run again; every job completes, readiness
    recovers, and the key never runs two handlers at once."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    # Each run stays under CLAIM_AFTER (50 ms), so it completes unclaimed; the 30 runs
    # keep the key busy past the backoffs (0.5 s, 1 s), so a job run again in place,
    # not from its key's mailbox, would overlap the key's later jobs.
    watch = KeyWatch(0.04)
    worker = key_worker(live, watch, concurrency=8)
    failures = [0]
    complete = UnclaimedStore.complete

    async def failing_complete(
        self: UnclaimedStore, job: JobMessage, result: str, started_at: dt.datetime
    ) -> str | None:
        if failures[0] < 2:
            failures[0] += 1
            raise ConnectionResetError("connection to Postgres lost")
        return await complete(self, job, result, started_at)

    monkeypatch.setattr(UnclaimedStore, "complete", failing_complete)
    with Producer(live) as producer:
        ids = [producer.submit("key.step", {"n": n}, key="entity-1") for n in range(30)]
    async with JobStore(live) as store, running(worker):

        async def all_complete() -> bool:
            return [(await store.status(i)).state for i in ids] == ["complete"] * 30

        await eventually(all_complete, timeout=60, what="every job complete")
        loop = worker._loop
        assert loop is not None
        await eventually(lambda: loop.record_problem is None, timeout=10, what="readiness")
    assert failures[0] == 2
    assert worker.stats.unrecorded == 2
    assert watch.most == 1, "two jobs of one key ran at once"
    assert len(watch.runs) == 32  # the two unrecorded runs ran again
    assert sorted(set(watch.runs)) == list(range(30))


async def test_a_duplicate_waits_for_the_first_deliverys_outcome_and_is_skipped(
    settings: Settings, schema_registry_url: str, monkeypatch: Any
) -> None:
    """Two submits of one dedupe key are one job in the key's mailbox twice. The first
    delivery hands the key on with its completion held back; the duplicate must not read
    the row before that completion, or it would run the handler a second time."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    watch = KeyWatch(0.01)
    worker = key_worker(live, watch)
    write = HeldWrite(monkeypatch)

    with Producer(live) as producer:
        first = producer.submit("key.step", {"n": 0}, key="entity-1", dedupe_key="once")
        second = producer.submit("key.step", {"n": 0}, key="entity-1", dedupe_key="once")
    assert first == second
    async with JobStore(live) as store, running(worker):
        await asyncio.wait_for(write.held.wait(), 60)
        # The duplicate was fetched with the first (one batch) and its key is free now:
        # without the wait it would start within milliseconds.
        await asyncio.sleep(0.5)
        assert watch.runs == [0]
        write.let_write.set()
        await eventually(
            lambda: worker.stats.duplicates_skipped == 1, timeout=30, what="the duplicate"
        )
        assert (await store.status(first)).state == "complete"
    assert watch.runs == [0]


async def test_a_postgres_outage_after_the_hand_off_loses_no_job_and_never_overlaps_a_key(
    through_proxy: Any,
) -> None:
    """Postgres is cut while one key's short jobs hand the key on and their completions
    are on the way. Those writes fail, their jobs go back to the key's mailbox and wait out
    their backoffs; once Postgres is back every job completes, readiness recovers, and the
    key never ran two handlers at once."""
    live, proxied, proxy = through_proxy
    watch = KeyWatch(0.04)  # under CLAIM_AFTER: every run completes unclaimed
    worker = key_worker(proxied, watch, concurrency=8)
    with Producer(live) as producer:
        ids = [producer.submit("key.step", {"n": n}, key="entity-1") for n in range(60)]
    async with JobStore(live) as store, running(worker):
        await eventually(lambda: len(watch.runs) >= 10, timeout=60, what="the first runs")
        await proxy.stop()
        await eventually(lambda: worker.stats.unrecorded > 0, timeout=30, what="a failed write")
        loop = worker._loop
        assert loop is not None
        assert loop.record_problem is not None
        await proxy.start()

        async def all_complete() -> bool:
            return [(await store.status(i)).state for i in ids] == ["complete"] * 60

        await eventually(all_complete, timeout=120, what="every job complete")
        await eventually(lambda: loop.record_problem is None, timeout=30, what="readiness")
    assert watch.most == 1, "two jobs of one key ran at once"
    assert sorted(set(watch.runs)) == list(range(60))
