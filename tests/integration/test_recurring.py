"""Recurring schedules on the real broker and Postgres, with a controllable clock: each tick
submitted once by three schedulers at once, DST in Europe/Paris, missed ticks."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Settings
from conveyor.consumer.worker import Worker
from conveyor.db import create_pool
from conveyor.errors import ScheduleNotFound
from conveyor.scheduling import recurring
from conveyor.scheduling.recurring import RecurringLoop, ScheduleSpec
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def paris(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS).astimezone(dt.UTC)  # type: ignore[misc,arg-type]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


@contextlib.asynccontextmanager
async def connection(s: Settings) -> AsyncIterator[Any]:
    """One pooled connection to the test's schema, closed after the block."""
    pool = await create_pool(s)
    try:
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def loops(s: Settings, clock: Clock, count: int) -> AsyncIterator[list[RecurringLoop]]:
    pool = await create_pool(s, min_size=1, max_size=count + 1)
    serde = Serde(s)
    started = [RecurringLoop(s, pool=pool, serde=serde, clock=clock) for _ in range(count)]
    try:
        for loop in started:
            await loop.start()
        yield started
    finally:
        for loop in started:
            await loop.close()
        await pool.close()
        serde.close()


def dedupe_keys_on(s: Settings, expected: int) -> collections.Counter[str]:
    """Dedupe keys of the jobs on the normal topic (one more read than expected, so a
    duplicate would show; returns after the read's deadline when none comes)."""
    topic = Topology.from_settings(s).job_topic("normal")
    records = read_topic(s.kafka_bootstrap, topic, expected + 1, timeout=5)
    with Serde(s) as serde:
        return collections.Counter(
            str(serde.decode(JOB_ENVELOPE, r.topic, r.value)["dedupe_key"]) for r in records
        )


async def test_three_schedulers_submit_each_tick_once_through_spring_forward(
    live: Settings,
) -> None:
    """Hourly in Europe/Paris over the night of 2026-03-29 (02:00 does not exist): three
    loops run every round together; each tick is submitted by exactly one of them."""
    clock = Clock(paris(2026, 3, 28, 23, 30))
    spec = ScheduleSpec(
        name="hourly",
        cron="0 * * * *",
        type="report.hourly",
        timezone="Europe/Paris",
        catch_up="all",
    )
    async with loops(live, clock, 3) as three:
        async with connection(live) as conn:
            await recurring.upsert(conn, spec, source="cli", now=clock())
        for _ in range(12):  # six real hours: 23:30 CET to 06:30 CEST, in half hours
            clock.now += dt.timedelta(minutes=30)
            await asyncio.gather(*(loop.run_once() for loop in three))
        submitted = [loop.submitted for loop in three]
    ticks = [paris(2026, 3, 29, h) for h in (0, 1, 3, 4, 5, 6)]  # no 02:00 that night
    expected = collections.Counter(recurring.tick_dedupe_key("hourly", t) for t in ticks)
    assert sum(submitted) == 6
    assert dedupe_keys_on(live, 6) == expected


@pytest.mark.parametrize(
    ("catch_up", "ticks"),
    [("all", [2, 3, 4]), ("last", [4]), ("none", [])],
)
async def test_ticks_missed_while_nothing_ran_follow_catch_up(
    live: Settings, catch_up: str, ticks: list[int]
) -> None:
    """Daily at 08:00 Paris; nothing ran from day 1 (after its tick) to day 4 at 09:00."""
    clock = Clock(paris(2026, 3, 1, 8, 0) + dt.timedelta(seconds=1))
    spec = ScheduleSpec(
        name=f"daily-{catch_up}",
        cron="0 8 * * *",
        type="report.daily",
        timezone="Europe/Paris",
        catch_up=catch_up,
        payload={"k": 1},
    )
    async with loops(live, clock, 1) as [loop], connection(live) as conn:
        await recurring.upsert(conn, spec, source="code", now=clock())
        clock.now = paris(2026, 3, 4, 9, 0)
        await loop.run_once()
        [row] = await recurring.list_schedules(conn)
    expected = collections.Counter(
        recurring.tick_dedupe_key(spec.name, paris(2026, 3, d, 8)) for d in ticks
    )
    assert loop.submitted == len(ticks)
    assert dedupe_keys_on(live, len(ticks)) == expected
    assert row.next_fire_at == paris(2026, 3, 5, 8)


async def test_pause_resume_and_remove(live: Settings) -> None:
    clock = Clock(paris(2026, 6, 1, 12))
    spec = ScheduleSpec(name="paused", cron="*/10 * * * *", type="tick.job")
    async with loops(live, clock, 1) as [loop], connection(live) as conn:
        await recurring.upsert(conn, spec, source="cli", now=clock())
        await recurring.set_paused(conn, "paused", True, now=clock())
        clock.now += dt.timedelta(hours=1)
        assert await loop.run_once() == 0
        await recurring.set_paused(conn, "paused", False, now=clock())
        [row] = await recurring.list_schedules(conn)
        assert (row.paused, row.next_fire_at) == (False, clock() + dt.timedelta(minutes=10))
        clock.now += dt.timedelta(minutes=10)
        assert await loop.run_once() == 1
        await recurring.remove(conn, "paused")
        with pytest.raises(ScheduleNotFound, match="no schedule named 'paused'"):
            await recurring.remove(conn, "paused")
        assert await recurring.list_schedules(conn) == []


async def test_a_worker_upserts_its_declared_schedule_and_submits_its_ticks(
    live: Settings,
) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    ran: list[int] = []

    @worker.handler("tick.job")
    async def tick(ctx: object, payload: dict[str, int]) -> None:
        ran.append(payload["n"])

    worker.schedule("every-minute", cron="* * * * *", type="tick.job", payload={"n": 7})
    async with running(worker):
        async with connection(live) as conn:

            async def declared() -> bool:
                return bool(await recurring.list_schedules(conn))

            await eventually(declared, what="the declared schedule stored")
            [row] = await recurring.list_schedules(conn)
            assert (row.name, row.source, row.payload) == ("every-minute", "code", {"n": 7})
            # Bring the next tick to now rather than wait up to a minute for it.
            await conn.execute(
                f'UPDATE "{live.database_schema}".schedules SET next_fire_at = now()'
            )
        await eventually(lambda: ran == [7], what="the tick's job to run")


async def test_a_refused_tick_is_logged_and_skipped_without_holding_back_other_schedules(
    live: Settings,
) -> None:
    small = live.replace(max_payload_bytes=100)
    clock = Clock(paris(2026, 6, 1, 12))
    good = ScheduleSpec(name="good", cron="*/10 * * * *", type="tick.job", payload={"n": 1})
    bad = ScheduleSpec(name="bad", cron="*/10 * * * *", type="tick.job", payload={"x": "y" * 200})
    async with loops(small, clock, 1) as [loop], connection(small) as conn:
        for spec in (bad, good):
            await recurring.upsert(conn, spec, source="cli", now=clock())
        clock.now += dt.timedelta(minutes=10)
        assert await loop.run_once() == 1
        rows = {r.name: r for r in await recurring.list_schedules(conn)}
    expected = collections.Counter([recurring.tick_dedupe_key("good", clock())])
    assert dedupe_keys_on(small, 1) == expected
    assert rows["bad"].next_fire_at == clock() + dt.timedelta(minutes=10)
    assert rows["bad"].last_fire_at is None
