"""Scheduling's bad input (one clear error at submit or declaration) and cron ticks across
DST changes, computed from fixed instants (the recurring logic's clock is injected)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import pytest

from conveyor import Settings, ValidationError, Worker
from conveyor.errors import ScheduleError
from conveyor.scheduling import cron
from conveyor.testing import TestWorker

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def paris(*args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS, fold=fold).astimezone(dt.UTC)  # type: ignore[misc,arg-type]


def new_worker() -> Worker:
    return Worker(Settings(metrics_port=0), priorities=["normal"], concurrency=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"run_at": dt.datetime(2031, 1, 1, 8)}, "run_at: 2031-01-01T08:00:00 has no time zone"),
        (
            {"run_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)},
            "s in the past (tolerance 5 s)",
        ),
        ({"run_at": "2031-01-01T08:00:00Z"}, "run_at: expected a timezone-aware datetime"),
        (
            {"run_at": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), "delay": 5},
            "give either delay or run_at, not both",
        ),
        ({"delay": 1.7e9}, "delay: must be at most"),
        ({"delay": -1}, "delay: must be >= 0"),
    ],
)
async def test_bad_delay_or_run_at_is_one_validation_error_and_nothing_is_sent(
    options: dict[str, Any], message: str
) -> None:
    async with TestWorker(new_worker()) as tw:
        producer = tw.producer()
        with pytest.raises(ValidationError, match="invalid job: ") as info:
            producer.submit("mail.remind", {}, **options)
        assert message in str(info.value)
        assert len(info.value.problems) == 1
        assert producer.stats.submitted == 0


async def test_a_run_at_just_past_within_the_tolerance_runs_now() -> None:
    worker = new_worker()
    ran: list[str] = []

    @worker.handler("mail.remind")
    async def remind(ctx: Any, payload: Any) -> None:
        ran.append(ctx.job_id)

    async with TestWorker(worker) as tw:
        job_id = tw.producer().submit(
            "mail.remind", {}, run_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        )
        await tw.drain()
    assert ran == [job_id]


async def test_a_ninety_day_delay_is_accepted_and_runs_on_its_day() -> None:
    worker = new_worker()
    ran: list[str] = []

    @worker.handler("mail.remind")
    async def remind(ctx: Any, payload: Any) -> None:
        ran.append(ctx.job_id)

    async with TestWorker(worker) as tw:
        job_id = tw.producer().submit("mail.remind", {}, delay=dt.timedelta(days=90))
        await tw.advance(dt.timedelta(days=89, hours=23))
        assert ran == []
        await tw.advance(dt.timedelta(hours=2))
    assert ran == [job_id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
        ({"cron": "every day"}, "invalid cron expression 'every day'"),
        ({"timezone": "Europe/Atlantis"}, "unknown time zone 'Europe/Atlantis'"),
        ({"catch_up": "some"}, "catch_up must be one of none, last, all"),
        ({"type": "Bad Type!"}, "is not a job type"),
        ({"priority": "urgent"}, "priority 'urgent' is not one of"),
    ],
)
def test_a_bad_schedule_is_one_schedule_error_at_declaration(
    kwargs: dict[str, Any], message: str
) -> None:
    worker = new_worker()
    declared: dict[str, Any] = {"cron": "0 8 * * *", "type": "report.daily", **kwargs}
    with pytest.raises(ScheduleError) as info:
        worker.schedule("daily", **declared)
    assert message in str(info.value)
    assert worker.schedules == []


def test_daily_ticks_keep_wall_clock_time_across_spring_forward_and_fall_back() -> None:
    daily = cron.parse("0 8 * * *", "Europe/Paris")
    ticks, total = daily.ticks(paris(2026, 3, 28, 8), paris(2026, 3, 30, 9))
    assert ticks == [paris(2026, 3, 28, 8), paris(2026, 3, 29, 8), paris(2026, 3, 30, 8)]
    assert total == 3
    # 08:00 in Paris is 07:00 UTC before the change and 06:00 UTC after it.
    assert [t.hour for t in ticks] == [7, 6, 6]
    ticks, _ = daily.ticks(paris(2026, 10, 24, 8), paris(2026, 10, 26, 9))
    assert [t.hour for t in ticks] == [6, 7, 7]


def test_a_time_skipped_by_spring_forward_fires_once_just_after_the_gap() -> None:
    nightly = cron.parse("30 2 * * *", "Europe/Paris")
    # 2026-03-29 02:30 does not exist in Paris (02:00 -> 03:00): it fires at 03:00 CEST.
    assert nightly.next_after(paris(2026, 3, 28, 12)) == paris(2026, 3, 29, 3)
    assert nightly.next_after(paris(2026, 3, 29, 3)) == paris(2026, 3, 30, 2, 30)


def test_a_time_repeated_by_fall_back_fires_once() -> None:
    nightly = cron.parse("30 2 * * *", "Europe/Paris")
    first = nightly.next_after(paris(2026, 10, 24, 12))
    # 02:30 happens twice on 2026-10-25; the tick is the first (CEST, 00:30 UTC), once.
    assert first == dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)
    assert nightly.next_after(first) == paris(2026, 10, 26, 2, 30)


def test_half_hourly_ticks_follow_real_time_through_the_repeated_hour() -> None:
    half = cron.parse("*/30 * * * *", "Europe/Paris")
    ticks, _ = half.ticks(
        dt.datetime(2026, 10, 24, 23, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 10, 25, 2, 0, tzinfo=dt.UTC),
    )
    # Every real half hour, the repeated 02:00-03:00 included: six ticks in 2.5 hours.
    assert [t.strftime("%H:%M") for t in ticks] == [
        "23:30",
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "02:00",
    ]


@pytest.mark.parametrize(
    ("catch_up", "now", "expected"),
    [
        # The scheduler was down from the 8:00 tick of day 1 until 8:00:30 on day 4.
        ("all", (2026, 3, 4, 8, 0, 30), [(1,), (2,), (3,), (4,)]),
        ("last", (2026, 3, 4, 8, 0, 30), [(4,)]),
        ("none", (2026, 3, 4, 8, 0, 30), [(4,)]),  # 30 s late: on time
        ("all", (2026, 3, 4, 9, 0, 0), [(1,), (2,), (3,), (4,)]),
        ("last", (2026, 3, 4, 9, 0, 0), [(4,)]),
        ("none", (2026, 3, 4, 9, 0, 0), []),  # an hour late: missed, skipped
    ],
)
def test_missed_ticks_follow_the_catch_up_policy(
    catch_up: str, now: tuple[int, ...], expected: list[tuple[int]]
) -> None:
    daily = cron.parse("0 8 * * *", "Europe/Paris")
    due, following = cron.due_ticks(daily, paris(2026, 3, 1, 8), paris(*now), catch_up)
    assert due == [paris(2026, 3, day, 8) for (day,) in expected]
    assert following == paris(2026, 3, 5, 8)


def test_nothing_is_due_before_the_next_fire_time() -> None:
    daily = cron.parse("0 8 * * *", "UTC")
    start = dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)
    assert cron.due_ticks(daily, start, start - dt.timedelta(seconds=1), "all") == ([], start)
