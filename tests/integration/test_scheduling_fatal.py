"""The scheduler on the real broker and Postgres when a producer hits a fatal librdkafka
error: its dispatcher, intake and recurring loop stop instead of retrying on a dead
producer, release, commit or advance nothing they did not publish, and the scheduler's
run ends with ``ProducerFatalError``, so a worker's liveness names the stopped scheduler
and ``conveyor scheduler`` exits 1 with one error line. A plain delivery failure is
still retried with backoff.

The fatal error is injected through the producer's ``error_cb`` (``Republisher._watch``,
or the job producer's ``DeliveryCore._watch`` for the recurring loop), as librdkafka
reports one when idempotence breaks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conveyor import AsyncProducer, Settings
from conveyor.consumer.republish import Republisher
from conveyor.consumer.worker import Worker
from conveyor.db import create_pool
from conveyor.errors import DeliveryError, ProducerFatalError
from conveyor.jobstore import JobStore
from conveyor.scheduling import recurring
from conveyor.scheduling.recurring import RecurringLoop, ScheduleSpec
from conveyor.scheduling.service import Scheduler
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.conftest import settings_env
from tests.faults import raw
from tests.kafka_helpers import broken_on_first_send, fatal_error, one_error_line, read_topic
from tests.scheduling_helpers import count, job_ids_on, scheduler
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

PENDING = "SELECT count(*) FROM scheduled_jobs WHERE released_at IS NULL AND NOT skipped"
GARBAGE = b"\x00\x00\x00\x00\x07garbage"


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    """One partition unit, topology applied, migrated."""
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


@contextlib.asynccontextmanager
async def started(s: Settings) -> AsyncIterator[Scheduler]:
    """A started scheduler whose run the test drives; closed after the block."""
    pool = await create_pool(s, min_size=1, max_size=4)
    serde = Serde(s)
    service = Scheduler(
        s, pool=pool, serde=serde, session_timeout_ms=6000, heartbeat_interval_ms=1000
    )
    try:
        await service.start()
        yield service
    finally:
        await service.close()
        await pool.close()
        serde.close()


async def ended_with(run: asyncio.Task[None]) -> BaseException:
    """The error the scheduler's run ended with (it must end by itself)."""
    try:
        await asyncio.wait_for(asyncio.shield(run), 60)
    except Exception as exc:
        return exc
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    raise AssertionError("the scheduler's run ended without an error")


def break_on_send(monkeypatch: pytest.MonkeyPatch, republisher: Republisher | None) -> None:
    """The republisher's producer reports a fatal error when it is first asked to send."""
    assert republisher is not None
    send = republisher.send

    def broken(*args: Any, **kwargs: Any) -> asyncio.Future[None]:
        republisher._watch(fatal_error("Idempotent producer: sequence gap (injected)"))
        return send(*args, **kwargs)

    monkeypatch.setattr(republisher, "send", broken)


async def test_a_fatal_error_while_releasing_ends_the_scheduler_and_releases_nothing(
    live: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A due job's release fails because the dispatcher's producer hit a fatal error: the
    dispatcher does not try again with the dead producer, the round is rolled back (the
    row pending, the job still ``scheduled``), and the scheduler's run ends with
    ``ProducerFatalError``. A new scheduler (a new producer) releases the job once."""
    topology = Topology.from_settings(live)
    async with started(live) as service:
        break_on_send(monkeypatch, service.dispatcher._republisher)
        run = asyncio.create_task(service.run(asyncio.Event()))
        async with AsyncProducer(live) as producer:
            job_id = await producer.submit("later.job", {}, delay=0.5)
        error = await ended_with(run)
        stats = service.dispatcher.stats
    assert isinstance(error, ProducerFatalError), repr(error)
    assert "the scheduler dispatcher's producer for " in str(error)
    assert "hit a fatal error and sends no more: Idempotent producer: sequence gap" in str(error)
    assert (stats.released, stats.failures) == (0, 0)
    assert not [r for r in caplog.records if "trying again" in r.getMessage()]
    assert await count(db, live, PENDING) == 1
    async with JobStore(live) as store:
        assert (await store.status(job_id)).state == "scheduled"
    async with scheduler(live) as again:
        await eventually(lambda: again.dispatcher.stats.released == 1, what="the next release")
    assert job_ids_on(live, topology.job_topic("normal"), 1) == collections.Counter([job_id])


async def test_a_plain_delivery_failure_is_still_retried_with_backoff(
    live: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that fails with a plain ``DeliveryError`` (not fatal) is rolled back and
    tried again after a pause, as before: the run goes on and the job is released once."""
    topology = Topology.from_settings(live)
    async with scheduler(live) as service:
        republisher = service.dispatcher._republisher
        assert republisher is not None
        send = republisher.send
        failed: list[str] = []

        def fail_once(topic: str, **kwargs: Any) -> asyncio.Future[None]:
            if failed:
                return send(topic, **kwargs)
            failed.append(topic)
            future = asyncio.get_running_loop().create_future()
            future.set_exception(DeliveryError(f"record not delivered to {topic}: injected"))
            return future

        monkeypatch.setattr(republisher, "send", fail_once)
        async with AsyncProducer(live) as producer:
            job_id = await producer.submit("later.job", {}, delay=0.5)
        await eventually(lambda: service.dispatcher.stats.released == 1, what="the retried release")
        failures = service.dispatcher.stats.failures
    assert (len(failed), failures) == (1, 1)
    assert job_ids_on(live, topology.job_topic("normal"), 1) == collections.Counter([job_id])


async def test_a_fatal_error_while_passing_a_message_on_ends_the_intake_uncommitted(
    live: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A message the intake cannot schedule is to be passed on to a job topic, but the
    intake's producer hit a fatal error: the intake does not try again, commits nothing
    past the message, and the scheduler's run ends with the error. A new scheduler reads
    the message again and passes it on, once."""
    topology = Topology.from_settings(live)
    async with started(live) as service:
        break_on_send(monkeypatch, service.intake._republisher)
        run = asyncio.create_task(service.run(asyncio.Event()))
        await asyncio.to_thread(raw.produce, live, topology.scheduled_topic, [(b"k", GARBAGE, [])])
        error = await ended_with(run)
        retries = service.intake.stats.retries
    assert isinstance(error, ProducerFatalError), repr(error)
    assert "the scheduler intake's producer for " in str(error)
    assert retries == 0
    assert not [r for r in caplog.records if "trying again" in r.getMessage()]
    assert read_topic(live.kafka_bootstrap, topology.job_topic("normal"), 1, timeout=2) == []
    async with scheduler(live) as again:
        await eventually(lambda: again.intake.stats.undecodable == 1, what="the message re-read")
    passed = read_topic(live.kafka_bootstrap, topology.job_topic("normal"), 2, timeout=5)
    assert [r.value for r in passed] == [GARBAGE]


@pytest.mark.parametrize("loop", ["dispatcher", "intake"])
async def test_a_fatal_error_ends_an_idle_scheduler(live: Settings, loop: str) -> None:
    """A producer's fatal error while nothing is being published also ends the run: the
    dispatcher looks at its producer before each round and the intake before each fetch,
    so liveness does not wait for a publish to fail."""
    async with started(live) as service:
        run = asyncio.create_task(service.run(asyncio.Event()))
        republisher = getattr(service, loop)._republisher
        assert republisher is not None
        assert not run.done()
        republisher._watch(fatal_error("Idempotent producer: unknown producer id (injected)"))
        error = await ended_with(run)
    assert isinstance(error, ProducerFatalError), repr(error)
    assert "unknown producer id (injected)" in str(error)


async def test_a_fatal_error_while_submitting_a_tick_ends_the_recurring_loop_unadvanced(
    live: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A due tick's submit fails because the recurring loop's producer hit a fatal error:
    the loop does not try again, and the schedule's ``next_fire_at`` is not advanced, so
    the next scheduler submits the tick."""
    start = dt.datetime(2026, 3, 5, 8, tzinfo=dt.UTC)
    spec = ScheduleSpec(name="every-ten", cron="*/10 * * * *", type="tick.job")
    pool = await create_pool(live, min_size=1, max_size=2)
    serde = Serde(live)
    loop = RecurringLoop(live, pool=pool, serde=serde, clock=lambda: start)
    try:
        async with pool.acquire() as conn:
            await recurring.upsert(conn, spec, source="cli", now=start - dt.timedelta(minutes=1))
        await loop.start()
        watch = loop._producer._core._watch if loop._producer is not None else None
        assert watch is not None
        watch(fatal_error("Idempotent producer: sequence gap (injected)"))
        with pytest.raises(ProducerFatalError, match="sequence gap"):
            await asyncio.wait_for(loop.run(asyncio.Event()), 30)
        async with pool.acquire() as conn:
            [row] = await recurring.list_schedules(conn)
    finally:
        await loop.close()
        await pool.close()
        serde.close()
    assert (loop.submitted, row.next_fire_at) == (0, start)
    assert not [r for r in caplog.records if "trying again" in r.getMessage()]


async def test_a_worker_whose_scheduler_hit_a_fatal_error_fails_liveness(
    live: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler beside a worker's jobs ends on its producer's fatal error, and
    ``Worker.helper_problem()`` (what ``/healthz`` reports) names the stopped scheduler."""
    send = Republisher.send

    def broken(self: Republisher, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        self._watch(fatal_error("Idempotent producer: sequence gap (injected)"))
        return send(self, *args, **kwargs)

    monkeypatch.setattr(Republisher, "send", broken)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    async with running(worker), AsyncProducer(live) as producer:
        await producer.submit("later.job", {}, delay=0.5)
        await eventually(
            lambda: worker.helper_problem() is not None, timeout=60, what="the scheduler to stop"
        )
        problem = worker.helper_problem()
    assert problem is not None
    assert problem.startswith("the scheduler stopped: ProducerFatalError("), problem
    assert "the scheduler dispatcher's producer" in problem


async def test_cli_scheduler_exits_with_one_error_line_when_its_producer_hits_a_fatal_error(
    live: Settings,
) -> None:
    """`conveyor scheduler` whose producer breaks on a release exits 1 with one
    `conveyor: error:` line naming the fatal error: no traceback, no retry loop, no
    clean-stop line."""
    async with broken_on_first_send("scheduler", settings_env(live)) as proc:
        assert proc.stdout is not None
        started_line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert started_line.decode().startswith("scheduler: consuming ")
        async with AsyncProducer(live) as producer:
            await producer.submit("later.job", {}, delay=0.5)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    error = one_error_line(proc.returncode, out, err)
    assert "the scheduler dispatcher's producer" in error
    assert "hit a fatal error and sends no more: sequence gap (injected)" in error
    assert "trying again" not in err.decode()
