"""``conveyor schedule``, ``conveyor scheduler`` and ``submit --run-at`` from a shell with
only CONVEYOR_* variables set."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import zoneinfo

import pytest

from conveyor import JobStore, Settings
from tests.conftest import CliResult, run_cli, settings_env
from tests.process_helpers import read_until
from tests.worker_helpers import eventually, prepare


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


async def cli(*args: str, settings: Settings) -> CliResult:
    return await asyncio.to_thread(run_cli, *args, env=settings_env(settings))


async def test_add_list_pause_resume_remove(migrated: Settings) -> None:
    added = await cli(
        "schedule",
        "add",
        "daily-report",
        "--cron",
        "0 8 * * *",
        "--type",
        "report.daily",
        "--timezone",
        "Europe/Paris",
        "--payload",
        '{"to": "ops"}',
        settings=migrated,
    )
    assert (added.code, added.stderr) == (0, "")
    assert added.stdout.startswith("schedule daily-report added; next fire at ")
    listed = await cli("schedule", "list", "--json", settings=migrated)
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["cron"], row["timezone"], row["payload"], row["paused"]) == (
        "daily-report",
        "0 8 * * *",
        "Europe/Paris",
        {"to": "ops"},
        False,
    )
    next_fire = dt.datetime.fromisoformat(row["next_fire_at"])
    assert next_fire.astimezone(zoneinfo.ZoneInfo("Europe/Paris")).hour == 8
    paused = await cli("schedule", "pause", "daily-report", settings=migrated)
    assert (paused.code, paused.stdout) == (0, "schedule daily-report paused\n")
    table = await cli("schedule", "list", settings=migrated)
    assert "daily-report" in table.stdout
    assert "paused" in table.stdout
    resumed = await cli("schedule", "resume", "daily-report", settings=migrated)
    assert (resumed.code, resumed.stdout) == (0, "schedule daily-report resumed\n")
    removed = await cli("schedule", "remove", "daily-report", settings=migrated)
    assert (removed.code, removed.stdout) == (0, "schedule daily-report removed\n")
    again = await cli("schedule", "remove", "daily-report", settings=migrated)
    assert (again.code, again.stdout) == (1, "")
    assert again.stderr == (
        "conveyor: error: no schedule named 'daily-report'; `conveyor schedule list` shows them\n"
    )
    assert (await cli("schedule", "list", settings=migrated)).stdout == "no schedules\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cron", "0 25 * * *"), "invalid cron expression '0 25 * * *'"),
        (("--cron", "0 8 * * *", "--timezone", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
    ],
)
async def test_a_bad_schedule_is_one_line_and_exit_1(
    migrated: Settings, args: tuple[str, ...], message: str
) -> None:
    result = await cli("schedule", "add", "bad", "--type", "a.b", *args, settings=migrated)
    assert result.code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr


async def test_submit_run_at_without_time_zone_is_refused(migrated: Settings) -> None:
    result = await cli(
        "submit", "a.b", "--payload", "{}", "--run-at", "2031-01-01T08:00:00", settings=migrated
    )
    assert result.code == 1
    assert result.stderr == (
        "conveyor: error: invalid job: run_at: 2031-01-01T08:00:00 has no time zone; pass an "
        "aware datetime such as datetime(..., tzinfo=datetime.UTC)\n"
    )


async def test_the_scheduler_alone_releases_a_run_at_job_and_status_shows_it_scheduled(
    live: Settings,
) -> None:
    env = {**os.environ, **settings_env(live)}
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "conveyor", "scheduler"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    try:
        await asyncio.to_thread(read_until, proc, "scheduler: consuming", 60)
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=15)
        submitted = await cli(
            "submit",
            "report.once",
            "--payload",
            "{}",
            "--run-at",
            due.isoformat(),
            "--wait",
            settings=live,
        )
        job_id = submitted.stdout.strip()
        async with JobStore(live) as store:

            async def state_is(expected: str) -> bool:
                return (await store.status(job_id)).state == expected

            await eventually(lambda: state_is("scheduled"), what="the job scheduled")
            shown = await cli("status", job_id, settings=live)
            assert shown.stdout.startswith(f"job {job_id}: scheduled\n")
            assert f"due         {due.isoformat(timespec='milliseconds')}" in shown.stdout
            await eventually(lambda: state_is("queued"), what="the job released")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0
    assert "scheduler: stopped; 1 job(s) released" in out
