"""``TestWorker``: a Worker's real handlers, decode, retries and DLQ, in process on a fake clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor import JobContext, RetryPolicy, Settings, ValidationError, Worker
from conveyor.testing import FakeClock, NoTestDatabaseError, TestWorker

FIVE_MINUTES = 300.0


def new_worker(**options: Any) -> Worker:
    return Worker(Settings(metrics_port=0), priorities=["normal"], concurrency=4, **options)


async def test_five_attempts_with_five_minute_backoff_dead_letter_without_waiting() -> None:
    """The 5-attempt, 5-minute-backoff policy runs to the DLQ by skipping the clock."""
    worker = new_worker()
    attempts: list[int] = []
    policy = RetryPolicy(max_attempts=5, initial=FIVE_MINUTES, maximum=FIVE_MINUTES, jitter=0)

    @worker.handler("report.build", retry=policy)
    async def build(ctx: JobContext, payload: dict[str, Any]) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("the warehouse is down")

    async with TestWorker(worker) as tw:
        job_id = tw.producer().submit("report.build", {"month": "2026-10"})
        await tw.drain()
        assert attempts == [1]
        await tw.advance(FIVE_MINUTES - 60)
        assert attempts == [1]  # the backoff is not over yet
        await tw.advance(60)
        assert attempts == [1, 2]
        skipped = await tw.settle()
        status = await tw.status(job_id)
        [entry] = await tw.dlq_list()

    assert attempts == [1, 2, 3, 4, 5]
    assert skipped == pytest.approx(3 * FIVE_MINUTES, abs=1.0)
    assert (status.state, status.attempts) == ("failed", 5)
    assert status.last_error is not None
    assert status.last_error["reason"] == "MaxRetries"
    assert (entry.original_job_id, entry.error_reason, entry.attempts) == (job_id, "MaxRetries", 5)
    assert [e["attempt"] for e in entry.error_history] == [1, 2, 3, 4, 5]
    assert [e["error_reason"] for e in tw.events] == ["MaxRetries"]


async def test_settle_runs_an_in_place_retry_whose_backoff_ended_in_real_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry parked on the clock whose backoff runs out by real time after the drain
    returned, and before settle looks at what is due, still runs before settle returns
    (a loaded machine once ended settle with the retry still parked)."""
    worker = new_worker()
    attempts: list[int] = []
    backoff = RetryPolicy(max_attempts=2, initial=0.05, maximum=0.05, jitter=0)

    @worker.handler("keyed.once", ordering="key", retry=backoff)
    async def keyed(ctx: JobContext, payload: dict[str, Any]) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")

    async with TestWorker(worker) as tw:
        looked = tw.clock.next_deadline

        def late_look() -> float | None:
            time.sleep(0.06)  # real time passes the parked retry's deadline
            return looked()

        monkeypatch.setattr(tw.clock, "next_deadline", late_look)
        tw.producer().submit("keyed.once", {}, key="k")
        await tw.settle()
        assert attempts == [1, 2]


async def test_a_delayed_job_runs_only_once_the_clock_reaches_it() -> None:
    worker = new_worker()
    ran: list[str] = []

    @worker.handler("mail.remind")
    async def remind(ctx: JobContext, payload: dict[str, Any]) -> None:
        ran.append(ctx.job_id)

    async with TestWorker(worker) as tw:
        job_id = tw.producer().submit("mail.remind", {}, delay=3600)
        await tw.drain()
        await tw.advance(3000)
        assert ran == []
        assert (await tw.status(job_id)).state == "scheduled"
        await tw.advance(600)
        assert ran == [job_id]
        assert (await tw.status(job_id)).state == "complete"


async def test_an_in_place_retry_holds_only_its_key_while_the_clock_stands() -> None:
    worker = new_worker()
    order: list[tuple[str, int, int]] = []
    policy = RetryPolicy(max_attempts=3, initial=FIVE_MINUTES, maximum=FIVE_MINUTES, jitter=0)

    @worker.handler("ledger.post", ordering="key", retry=policy)
    async def post(ctx: JobContext, payload: dict[str, Any]) -> None:
        order.append((ctx.key, payload["n"], ctx.attempt))
        if ctx.key == "a" and payload["n"] == 0 and ctx.attempt == 1:
            raise RuntimeError("try again")

    async with TestWorker(worker) as tw:
        producer = tw.producer()
        for n in range(2):
            for key in ("a", "b"):
                producer.submit("ledger.post", {"n": n}, key=key)
        await tw.drain()
        assert [o for o in order if o[0] == "a"] == [("a", 0, 1)]
        assert [o for o in order if o[0] == "b"] == [("b", 0, 1), ("b", 1, 1)]
        await tw.advance(FIVE_MINUTES)
    assert [o for o in order if o[0] == "a"] == [("a", 0, 1), ("a", 0, 2), ("a", 1, 1)]


async def test_an_undecodable_message_is_dead_lettered_raw() -> None:
    worker = new_worker()
    async with TestWorker(worker) as tw:
        tw.log.append(tw.topology.job_topic("normal"), b"k", b"not an envelope")
        await tw.drain()
        [entry] = await tw.dlq_list()
    assert (entry.original_job_id, entry.error_reason, entry.payload) == (
        None,
        "Deserialization",
        b"not an envelope",
    )
    assert tw.events == []  # no job id, so no JobFailed event


async def test_a_job_type_without_a_handler_is_dead_lettered_at_once() -> None:
    async with TestWorker(new_worker()) as tw:
        job_id = tw.producer().submit("nobody.handles", {})
        await tw.drain()
        [entry] = await tw.dlq_list()
        assert (await tw.status(job_id)).state == "failed"
    assert (entry.original_job_id, entry.error_reason) == (job_id, "HandlerMissing")


async def test_a_timed_out_last_attempt_is_dead_lettered_as_timeout() -> None:
    worker = new_worker()

    @worker.handler("slow.job", timeout=0.05, max_attempts=1)
    async def slow(ctx: JobContext, payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    async with TestWorker(worker) as tw:
        tw.producer().submit("slow.job", {})
        await tw.drain()
        [entry] = await tw.dlq_list()
    assert entry.error_reason == "Timeout"


async def test_ctx_db_without_a_database_names_the_fixture_to_use() -> None:
    worker = new_worker()

    @worker.handler("outbox.write")
    async def write(ctx: JobContext, payload: dict[str, Any]) -> None:
        await ctx.db.execute("SELECT 1")

    async with TestWorker(worker) as tw:
        tw.producer().submit("outbox.write", {})
        with pytest.raises(NoTestDatabaseError, match="conveyor_db"):
            await tw.drain()


async def test_the_producer_validates_before_anything_reaches_the_log() -> None:
    async with TestWorker(new_worker()) as tw:
        producer = tw.async_producer()
        with pytest.raises(ValidationError) as caught:
            await producer.submit("bad type!", [{"ok": 1}, {"nan": float("nan")}])
        assert tw.log.records(tw.topology.job_topic("normal")) == []
        assert producer.stats.submitted == 0
    assert "type" in str(caught.value)


async def test_a_queued_job_cancelled_before_it_runs_is_skipped() -> None:
    worker = new_worker()
    ran: list[str] = []

    @worker.handler("thumb.make")
    async def make(ctx: JobContext, payload: dict[str, Any]) -> None:
        ran.append(ctx.job_id)

    async with TestWorker(worker) as tw:
        job_id = tw.producer().submit("thumb.make", {})
        assert await tw.cancel(job_id, reason="not needed") == "cancelled"
        await tw.drain()
        status = await tw.status(job_id)
    assert ran == []
    assert [(t.state, t.error) for t in status.history] == [
        ("cancelled", {"type": "Cancelled", "message": "not needed"})
    ]


async def test_sync_handlers_run_in_a_thread_and_priorities_are_served() -> None:
    worker = Worker(Settings(metrics_port=0), priorities=["critical", "low"], concurrency=1)

    @worker.handler("sum.up")
    def add(ctx: JobContext, payload: dict[str, Any]) -> int:
        return sum(payload["xs"])

    async with TestWorker(worker) as tw:
        producer = tw.producer()
        low = producer.submit("sum.up", {"xs": [1, 2]}, priority="low")
        critical = producer.submit("sum.up", {"xs": [3, 4]}, priority="critical")
        unserved = producer.submit("sum.up", {"xs": [5]}, priority="normal")
        await tw.drain()
        assert (await tw.status(low)).result == 3
        assert (await tw.status(critical)).result == 7
        assert (await tw.status(unserved)).state == "unknown"  # no consumer for normal


async def test_the_fake_clock_only_moves_forward() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="forward"):
        await clock.skip(-1)
    async with TestWorker(new_worker(), clock=clock) as tw:
        with pytest.raises(ValueError, match="forward"):
            await tw.advance(-1)
        await tw.advance(86400)
    assert clock.skipped == 86400


async def test_memory_status_fences_an_old_lease_like_postgres_does() -> None:
    """A second claim of a job takes it over: the first lease can record nothing."""
    from conveyor.consumer.job import JobMessage
    from conveyor.errors import LeaseLostError
    from conveyor.testing.memstatus import MemoryStatus

    store = MemoryStatus(FakeClock())
    job = JobMessage(
        job_id="0b7c4bb0-6a1e-4c56-9f6c-1d3f0e6b1a11",
        type="x.y",
        key="k",
        priority="normal",
        payload=b"{}",
        content_type="application/json",
        tenant_id=None,
        batch_id=None,
        dedupe_key=None,
        attempt=1,
        max_attempts=None,
        submitted_at=FakeClock().now(),
        not_before=None,
        duration="short",
        errors=[],
        topic="t.jobs.normal",
        partition=0,
        offset=0,
        headers={},
    )
    first = await store.claim(job)
    second = await store.claim(job)
    assert not isinstance(first, str)
    assert not isinstance(second, str)
    assert second.epoch == first.epoch + 1
    with pytest.raises(LeaseLostError):
        await store.complete_alone(first, "stale")
    assert await store.progress(first, 10, None) is False
    await store.complete_alone(second, {"ok": True})
    assert await store.claim(job) == "complete"  # dedupe on consume
    status = store.status(job.job_id)
    assert [t.state for t in status.history] == ["queued", "processing", "processing", "complete"]
    assert status.result == {"ok": True}
    with pytest.raises(TypeError, match="JSON-serialisable"):
        await store.complete_alone(second, object())


@pytest.mark.parametrize("keys", [("alpha", "gamma"), ("alpha", "alpha")])
async def test_a_far_delayed_job_never_holds_back_a_nearer_one(keys: tuple[str, str]) -> None:
    """Delayed jobs wait in the scheduler's table, not at a retry rung's head: a 1-day job
    runs after a day even behind a 2-day job of the same key (the same partition)."""
    import datetime as dt

    worker = new_worker()
    ran: list[int] = []

    @worker.handler("later.job")
    async def later(ctx: JobContext, payload: dict[str, Any]) -> None:
        ran.append(payload["n"])

    async with TestWorker(worker) as tw:
        producer = tw.producer()
        producer.submit("later.job", {"n": 2}, key=keys[0], delay=dt.timedelta(days=2))
        producer.submit("later.job", {"n": 1}, key=keys[1], delay=dt.timedelta(days=1))
        await tw.advance(dt.timedelta(days=1, hours=1))
        assert ran == [1]
        await tw.advance(dt.timedelta(days=1))
    assert ran == [1, 2]


async def test_run_at_and_cancel_of_a_scheduled_job_on_the_fake_clock() -> None:
    import datetime as dt

    worker = new_worker()
    ran: list[str] = []

    @worker.handler("mail.remind")
    async def remind(ctx: JobContext, payload: dict[str, Any]) -> None:
        ran.append(ctx.job_id)

    async with TestWorker(worker) as tw:
        producer = tw.producer()
        due = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
        kept = producer.submit("mail.remind", {}, run_at=due)
        dropped = producer.submit("mail.remind", {}, run_at=due)
        await tw.drain()
        status = await tw.status(kept)
        assert (status.state, status.scheduled_for) == (
            "scheduled",
            due.replace(microsecond=due.microsecond // 1000 * 1000),
        )
        assert await tw.cancel(dropped) == "cancelled"
        await tw.settle()
        assert ran == [kept]
        assert [t.state for t in (await tw.status(kept)).history] == [
            "scheduled",
            "queued",
            "processing",
            "complete",
        ]
        assert (await tw.status(dropped)).state == "cancelled"


async def test_a_dead_job_is_replayed_once_and_keeps_its_history() -> None:
    from conveyor.errors import ReplayRefused

    worker = new_worker()
    fixed: list[bool] = []

    @worker.handler("bill.pay", max_attempts=1)
    async def pay(ctx: JobContext, payload: dict[str, Any]) -> str:
        if not fixed:
            raise RuntimeError("the bank is down")
        return "paid"

    async with TestWorker(worker) as tw:
        job_id = tw.producer().submit("bill.pay", {"amount": 10})
        await tw.drain()
        [entry] = await tw.dlq_list()
        fixed.append(True)
        assert await tw.replay(entry.id) == job_id
        with pytest.raises(ReplayRefused, match="already replayed"):
            await tw.replay(entry.id)
        await tw.drain()
        status = await tw.status(job_id)
        assert await tw.dlq_list() == []  # the entry is no longer pending
        [replayed] = await tw.dlq_list(pending_only=False)
    assert (status.state, status.result, status.attempts) == ("complete", "paid", 1)
    assert [t.state for t in status.history] == [
        "queued",
        "processing",
        "failed",
        "queued",
        "processing",
        "complete",
    ]
    assert status.history[3].error == {
        "type": "Replayed",
        "message": f"replayed from DLQ entry {entry.id}",
    }
    assert replayed.replayed_at is not None


async def test_memory_status_skips_an_older_attempt_and_resumes_an_in_place_retry() -> None:
    """The claim rules of CLAIM_MANY: attempts never go backwards."""
    import dataclasses

    from conveyor.consumer.job import JobMessage
    from conveyor.testing.memstatus import MemoryStatus

    store = MemoryStatus(FakeClock())
    job = JobMessage(
        job_id="4f1d1c8e-2d0a-4b5e-8d6f-6f0c7a9e2b10",
        type="x.y",
        key="k",
        priority="normal",
        payload=b"{}",
        content_type="application/json",
        tenant_id=None,
        batch_id=None,
        dedupe_key=None,
        attempt=1,
        max_attempts=None,
        submitted_at=FakeClock().now(),
        not_before=None,
        duration="short",
        errors=[],
        topic="t.jobs.normal",
        partition=0,
        offset=0,
        headers={},
    )
    error = {"type": "E", "message": "m", "traceback": "", "at": FakeClock().now()}
    first = await store.claim(job)
    assert not isinstance(first, str)
    await store.retry(first, error)
    second = await store.claim(dataclasses.replace(job, attempt=2))
    assert not isinstance(second, str)
    await store.retry(second, error)

    assert await store.claim(job) == "queued"
    resumed = await store.claim(job, in_place=True)
    assert not isinstance(resumed, str)
    assert resumed.attempt == 3
