"""The worker runtime on the real broker and Postgres."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
from collections.abc import Awaitable
from typing import Any

import asyncpg
import pytest

from conveyor import Producer, Settings
from conveyor.consumer import unclaimed
from conveyor.consumer.context import JobContext
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.worker import Worker
from conveyor.jobstore import JobStore
from conveyor.observability import logs
from conveyor.topology.model import PRIORITIES
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

pytestmark = pytest.mark.smoke


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    """One partition unit (2 partitions on `normal`), topology applied, migrated."""
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


async def job_state(store: JobStore, job_id: str) -> str:
    return (await store.status(job_id)).state


async def all_in_state(store: JobStore, ids: list[str], state: str) -> bool:
    states = await asyncio.gather(*(job_state(store, j) for j in ids))
    return all(s == state for s in states)


async def test_keys_run_in_order_and_concurrency_scales_with_keys_not_partitions(
    live: Settings,
) -> None:
    """200 keys on 2 partitions: more than 2 jobs run at once, never two of one key."""
    worker = Worker(live, priorities=["normal"], concurrency=32, options=TEST_OPTIONS)
    seen: dict[str, list[int]] = collections.defaultdict(list)
    running_keys: set[str] = set()
    overlaps = 0
    active = 0
    peak = 0

    @worker.handler("order.step")
    async def step(ctx: JobContext, payload: dict[str, Any]) -> None:
        nonlocal overlaps, active, peak
        if ctx.key in running_keys:
            overlaps += 1
        running_keys.add(ctx.key)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)  # the handler's work
        seen[ctx.key].append(payload["seq"])
        active -= 1
        running_keys.discard(ctx.key)

    keys = [f"k{i}" for i in range(200)]
    with Producer(live) as producer:
        for seq in range(3):
            for key in keys:
                producer.submit("order.step", {"seq": seq}, key=key)
    async with running(worker):
        await eventually(lambda: sum(len(v) for v in seen.values()) >= 600, what="600 jobs")
    assert overlaps == 0
    assert peak > 2, f"observed concurrency {peak} is not above the 2 partitions"
    for key in keys:
        assert seen[key] == [0, 1, 2], key


async def test_a_duplicate_submit_runs_once(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    runs: list[str] = []

    @worker.handler("invoice.send")
    async def send(ctx: JobContext, payload: Any) -> dict[str, int]:
        runs.append(ctx.job_id)
        return {"n": len(runs)}

    with Producer(live) as producer:
        first = producer.submit("invoice.send", {}, dedupe_key="inv-1")
        second = producer.submit("invoice.send", {}, dedupe_key="inv-1")
    assert first == second
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: worker.stats.duplicates_skipped == 1, what="the duplicate skip")
        status = await store.status(first)
    assert runs == [first]
    assert status.state == "complete"
    assert status.result == {"n": 1}
    assert [t.state for t in status.history] == ["queued", "processing", "complete"]


async def test_ctx_db_commits_with_completion_and_rolls_back_with_failure(
    live: Settings, db: asyncpg.Connection[Any]
) -> None:
    table = f'"{live.database_schema}".side_effects'
    await db.execute(f"CREATE TABLE {table} (job_id text PRIMARY KEY)")
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)

    @worker.handler("side.effect", max_attempts=1)
    async def write(ctx: JobContext, payload: dict[str, bool]) -> None:
        await ctx.db.execute("INSERT INTO side_effects (job_id) VALUES ($1)", ctx.job_id)
        if payload["fail"]:
            raise RuntimeError("after the write")

    with Producer(live) as producer:
        ok = producer.submit("side.effect", {"fail": False})
        bad = producer.submit("side.effect", {"fail": True})
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: worker.stats.completed + worker.stats.failed == 2, what="2 jobs")
        failed = await store.status(bad)
        assert (await store.status(ok)).state == "complete"
    assert failed.state == "failed"
    assert failed.last_error is not None
    assert "after the write" in failed.last_error["message"]
    rows = [r["job_id"] for r in await db.fetch(f"SELECT job_id FROM {table}")]
    assert rows == [ok]


async def test_handlers_ctx_db_keeps_postgres_default_planning(live: Settings) -> None:
    """force_custom_plan is for the worker's own batched statements, not users' queries."""
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)

    @worker.handler("plan.mode")
    async def mode(ctx: JobContext, payload: Any) -> str:
        return str(await ctx.db.fetchval("SHOW plan_cache_mode"))

    with Producer(live) as producer:
        job_id = producer.submit("plan.mode", {})
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: worker.stats.completed == 1, what="the job")
        status = await store.status(job_id)
    assert status.result == "auto"


async def test_a_short_job_gets_one_status_write_and_a_slow_one_shows_processing(
    live: Settings, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs start unclaimed; a handler still running at CLAIM_AFTER is claimed then."""
    # Long enough that a stalled event loop on a busy machine cannot claim the quick job.
    monkeypatch.setattr(unclaimed, "CLAIM_AFTER", 3.0)
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    release = asyncio.Event()

    @worker.handler("quick.one")
    async def quick(ctx: JobContext, payload: Any) -> str:
        return "done"

    @worker.handler("slow.one")
    async def slow(ctx: JobContext, payload: Any) -> str:
        await release.wait()
        return "done"

    with Producer(live) as producer:
        fast = producer.submit("quick.one", {})
        held = producer.submit("slow.one", {})
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: worker.stats.completed == 1, what="the quick job")
        await eventually(
            lambda: _is(job_state(store, held), "processing"), what="the slow job processing"
        )
        release.set()
        await eventually(lambda: worker.stats.completed == 2, what="the slow job")
        quick_status = await store.status(fast)
        slow_status = await store.status(held)
    epochs = {
        str(r["job_id"]): r["lease_epoch"]
        for r in await db.fetch(f'SELECT job_id, lease_epoch FROM "{live.database_schema}".jobs')
    }
    assert epochs == {fast: 0, held: 1}  # the quick job was never claimed
    for status in (quick_status, slow_status):
        assert status.state == "complete"
        assert [t.state for t in status.history] == ["queued", "processing", "complete"]


async def _is(state: Awaitable[str], wanted: str) -> bool:
    return await state == wanted


async def test_a_job_cancelled_while_it_runs_unclaimed_is_interrupted(live: Settings) -> None:
    """Cancelled in its first moments (still queued in the row): its claim is refused."""
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    started, interrupted = asyncio.Event(), asyncio.Event()

    @worker.handler("block.forever")
    async def block(ctx: JobContext, payload: Any) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            interrupted.set()
            raise

    with Producer(live) as producer:
        job_id = producer.submit("block.forever", {})
    async with running(worker), JobStore(live) as store:
        await eventually(started.is_set, what="the handler to start")
        assert await store.cancel(job_id) in ("cancelled", "processing")
        await eventually(interrupted.is_set, what="the handler interrupted")
        await eventually(lambda: worker.stats.cancelled == 1, what="the cancel counted")
        assert (await store.status(job_id)).state == "cancelled"


async def test_a_short_jobs_slot_frees_while_its_completion_waits(
    live: Settings, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrency 1: the next job's handler runs while the first one's write is blocked."""
    monkeypatch.setattr(unclaimed, "CLAIM_AFTER", 30.0)  # the first job stays unclaimed
    # No ledger: its insert of both jobs in one statement would wait on the blocked row
    # while holding the second's, and the second's write would wait behind it.
    options = dataclasses.replace(TEST_OPTIONS, run_ledger=False)
    worker = Worker(live, priorities=["normal"], concurrency=1, options=options)
    ran: list[str] = []

    @worker.handler("quick.one")
    async def quick(ctx: JobContext, payload: Any) -> None:
        ran.append(ctx.job_id)

    with Producer(live) as producer:
        first = producer.submit("quick.one", {})
    blocker = db.transaction()
    await blocker.start()
    committed = False
    try:
        # An uncommitted row of the first job: its completion waits for this transaction.
        await db.execute(
            f"INSERT INTO \"{live.database_schema}\".jobs (job_id, state) VALUES ($1, 'queued')",
            first,
        )
        async with running(worker):
            await eventually(lambda: ran == [first], what="the first handler")
            with Producer(live) as producer:
                second = producer.submit("quick.one", {})
            await eventually(lambda: ran == [first, second], what="the second handler")
            await eventually(lambda: worker.stats.completed == 1, what="the second's write")
            await blocker.commit()
            committed = True
            await eventually(lambda: worker.stats.completed == 2, what="the first's write")
    finally:
        if not committed:
            await blocker.rollback()


async def test_a_cancelled_queued_job_is_skipped(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    runs: list[str] = []

    @worker.handler("report.build")
    async def build(ctx: JobContext, payload: Any) -> None:
        runs.append(ctx.job_id)

    with Producer(live) as producer:
        doomed = producer.submit("report.build", {})
        kept = producer.submit("report.build", {})
    async with JobStore(live) as store:
        assert await store.cancel(doomed) == "cancelled"
        async with running(worker):
            await eventually(lambda: all_in_state(store, [kept], "complete"), what="kept job")
            await eventually(
                lambda: worker.stats.cancelled == 1, what="the skip of the cancelled job"
            )
        assert (await store.status(doomed)).state == "cancelled"
    assert runs == [kept]


async def test_cancel_interrupts_a_running_job_and_rolls_back_its_writes(
    live: Settings, db: asyncpg.Connection[Any]
) -> None:
    table = f'"{live.database_schema}".partial'
    await db.execute(f"CREATE TABLE {table} (job_id text)")
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    started = asyncio.Event()

    @worker.handler("video.encode")
    async def encode(ctx: JobContext, payload: Any) -> None:
        await ctx.db.execute("INSERT INTO partial VALUES ($1)", ctx.job_id)
        started.set()
        await asyncio.Event().wait()  # runs until interrupted

    with Producer(live) as producer:
        job_id = producer.submit("video.encode", {})
    async with running(worker), JobStore(live) as store:
        await asyncio.wait_for(started.wait(), 60)
        assert await store.cancel(job_id) == "processing"
        await eventually(lambda: all_in_state(store, [job_id], "cancelled"), what="cancelled state")
        status = await store.status(job_id)
    assert worker.stats.cancelled == 1
    assert [t.state for t in status.history][-1] == "cancelled"
    assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_progress_streams_until_the_job_ends(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    go = asyncio.Event()

    @worker.handler("import.csv")
    async def run_import(ctx: JobContext, payload: Any) -> str:
        await go.wait()
        for pct in (25, 50, 75):
            await ctx.report_progress(pct, f"{pct}% imported")
        return "done"

    with Producer(live) as producer:
        job_id = producer.submit("import.csv", {})
    seen: list[tuple[str, float | None]] = []
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: all_in_state(store, [job_id], "processing"), what="processing")

        async def follow() -> None:
            async for status in store.progress(job_id):
                seen.append((status.state, status.progress.pct if status.progress else None))

        follower = asyncio.create_task(follow())
        await eventually(lambda: len(seen) >= 1, what="the first status")
        go.set()
        await asyncio.wait_for(follower, 60)
    assert seen[-1] == ("complete", 75)
    pcts = [pct for state, pct in seen if state == "processing" and pct is not None]
    assert pcts == sorted(pcts)
    assert 25 in pcts or 50 in pcts or 75 in pcts


async def test_a_long_job_outlives_max_poll_interval_without_a_rebalance(live: Settings) -> None:
    options = WorkerOptions(
        commit_interval=0.2,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=2000,
        lease_seconds=1.5,
        shutdown_grace=10.0,
    )
    worker = Worker(live, priorities=["normal"], concurrency=2, options=options)

    @worker.handler("backup.run", duration="long")
    async def backup(ctx: JobContext, payload: Any) -> str:
        await asyncio.sleep(5)  # the job's work, longer than max.poll.interval.ms
        return "ok"

    with Producer(live) as producer:
        job_id = producer.submit("backup.run", {})
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: all_in_state(store, [job_id], "complete"), what="the long job")
        status = await store.status(job_id)
    assert worker.stats.rebalances == 0
    assert status.attempts == 1
    assert [t.state for t in status.history] == ["queued", "processing", "complete"]


async def test_weighted_shares_under_a_full_backlog_of_all_priorities(live: Settings) -> None:
    """While all four priorities are backlogged, completions split about 4:3:2:1."""
    worker = Worker(live, priorities=PRIORITIES, concurrency=2, options=TEST_OPTIONS)
    order: list[str] = []

    @worker.handler("work.unit")
    async def unit(ctx: JobContext, payload: Any) -> None:
        order.append(ctx.priority)
        await asyncio.sleep(0.002)  # the handler's work

    per_priority = 250
    with Producer(live) as producer:
        for priority in PRIORITIES:
            producer.submit("work.unit", [{}] * per_priority, priority=priority)
    async with running(worker):
        await eventually(lambda: worker.stats.completed >= 450, timeout=120, what="450 completions")
    # Measure from the point where every priority had arrived, over 200 completions,
    # which ends before `low` (the smallest share) could have drained its backlog.
    first_all = next(i for i in range(len(order)) if set(order[: i + 1]) == set(PRIORITIES))
    window = list(itertools.islice(order, first_all + 1, first_all + 201))
    counts = collections.Counter(window)
    for priority, expected in zip(PRIORITIES, (0.4, 0.3, 0.2, 0.1), strict=True):
        share = counts[priority] / len(window)
        assert abs(share - expected) <= 0.15 * expected, (priority, share, counts)


async def test_a_deep_backlog_is_read_in_bounded_batches(live: Settings) -> None:
    """Pause/resume keeps the buffer under twice the per-partition limit, and nothing stalls."""
    limit = 20
    options = WorkerOptions(
        commit_interval=0.2,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_buffered_per_partition=limit,
    )
    worker = Worker(live, priorities=["normal"], concurrency=4, options=options)
    done: list[int] = []

    @worker.handler("feed.item")
    async def item(ctx: JobContext, payload: dict[str, int]) -> None:
        await asyncio.sleep(0.002)  # the handler's work
        done.append(payload["n"])

    with Producer(live) as producer:
        # One key: the whole backlog sits in one mailbox, one job at a time.
        producer.submit("feed.item", [{"n": i} for i in range(300)], key="one-entity")
    async with running(worker):
        await eventually(lambda: len(done) == 300, timeout=120, what="300 jobs")
    assert done == list(range(300))
    assert 0 < worker.stats.max_buffered <= 2 * limit


async def test_a_stop_before_the_run_starts_ends_that_run_and_not_the_next(
    live: Settings,
) -> None:
    """A Ctrl-C during a CLI's start-up calls stop() before run() begins: that run ends
    once started (it used to replace the stop and run on), and the next one runs."""
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    runs: list[str] = []

    @worker.handler("early.stop")
    async def handle(ctx: JobContext, payload: Any) -> None:
        runs.append(ctx.job_id)

    worker.stop()
    await asyncio.wait_for(worker.run(), 60)
    with Producer(live) as producer:
        job_id = producer.submit("early.stop", {}, wait=True)
    async with running(worker):
        await eventually(lambda: runs == [job_id], what="the next run to run the job")


async def test_a_handlers_log_records_carry_its_job_fields(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    fields: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "hello from the handler":
                fields.append(logs.current_fields())

    @worker.handler("log.fields")
    async def handle(ctx: JobContext, payload: Any) -> None:
        ctx.log.warning("hello from the handler")

    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        with Producer(live) as producer:
            job_id = producer.submit("log.fields", {}, tenant_id="acme", wait=True)
        async with running(worker):
            await eventually(lambda: bool(fields), what="the handler's record")
    finally:
        logging.getLogger().removeHandler(capture)
    [record] = fields
    # With a tracer provider installed (by another test of the session), a span is
    # current too, and its ids join the job's fields.
    record.pop("trace_id", None)
    record.pop("span_id", None)
    assert record == {
        "job_id": job_id,
        "job_type": "log.fields",
        "priority": "normal",
        "attempt": 1,
        "tenant_id": "acme",
    }
