"""The Scheduled page and ``/api/scheduled`` on real Postgres: waiting jobs, schedules with
their next fire time, pause and resume behind the CSRF check."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
from starlette.testclient import TestClient

from conveyor import db as conveyor_db
from conveyor.scheduling import recurring
from conveyor.settings import Settings
from conveyor.ui import create_app
from conveyor.ui.state import UiOptions


async def arrange(s: Settings, conn: asyncpg.Connection[Any]) -> str:
    """One schedule and one job due in a day."""
    job_id = str(uuid.uuid4())
    await conn.execute(
        f'INSERT INTO "{s.database_schema}".scheduled_jobs (job_id, due_at, topic, type, '
        "priority, message_key, message_value) VALUES ($1, now() + interval '1 day', 't', "
        "'mail.remind', 'high', 'k', 'v')",
        uuid.UUID(job_id),
    )
    pool = await conveyor_db.create_pool(s)
    try:
        async with pool.acquire() as pooled:
            await recurring.upsert(
                pooled,
                recurring.ScheduleSpec(
                    name="nightly <b>", cron="0 3 * * *", type="db.vacuum", timezone="Europe/Paris"
                ),
                source="cli",
            )
    finally:
        await pool.close()
    return job_id


async def test_scheduled_page_lists_waiting_jobs_and_schedules_and_pauses_with_csrf(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    job_id = await arrange(migrated, db)
    with TestClient(create_app(migrated, UiOptions())) as client:
        data = client.get("/api/scheduled").json()
        assert [j["job_id"] for j in data["jobs"]] == [job_id]
        assert data["total"] == 1
        [schedule] = data["schedules"]
        assert (schedule["name"], schedule["paused"]) == ("nightly <b>", False)
        next_fire = dt.datetime.fromisoformat(schedule["next_fire_at"])
        assert next_fire > dt.datetime.now(dt.UTC)

        page = client.get("/scheduled")
        assert page.status_code == 200
        assert job_id in page.text
        assert "nightly &lt;b&gt;" in page.text  # escaped
        assert "nightly <b>" not in page.text

        refused = client.post("/api/schedules/nightly%20%3Cb%3E/pause")
        assert refused.status_code == 403
        token = client.get("/api/csrf").json()["csrf_token"]
        paused = client.post(
            "/api/schedules/nightly%20%3Cb%3E/pause", headers={"X-CSRF-Token": token}
        )
        assert paused.json() == {"name": "nightly <b>", "paused": True}
        assert client.get("/api/scheduled").json()["schedules"][0]["paused"] is True
        resumed = client.post(
            "/schedules/nightly%20%3Cb%3E/resume",
            data={"csrf_token": token},
            follow_redirects=False,
        )
        assert (resumed.status_code, resumed.headers["location"]) == (303, "/scheduled")
        assert client.get("/api/scheduled").json()["schedules"][0]["paused"] is False
        missing = client.post("/api/schedules/nope/pause", headers={"X-CSRF-Token": token})
        assert missing.status_code == 404


async def test_a_schedule_named_with_a_slash_is_paused_from_its_pages_form(
    migrated: Settings,
) -> None:
    """Schedule names may hold ``/``; the page's form posts it unencoded in the path."""
    pool = await conveyor_db.create_pool(migrated)
    try:
        async with pool.acquire() as conn:
            await recurring.upsert(
                conn,
                recurring.ScheduleSpec(name="reports/daily", cron="0 3 * * *", type="t"),
                source="cli",
            )
    finally:
        await pool.close()
    with TestClient(create_app(migrated, UiOptions())) as client:
        page = client.get("/scheduled").text
        assert 'action="/schedules/reports/daily/pause"' in page
        token = client.get("/api/csrf").json()["csrf_token"]
        paused = client.post(
            "/schedules/reports/daily/pause", data={"csrf_token": token}, follow_redirects=False
        )
        assert paused.status_code == 303
        [schedule] = client.get("/api/scheduled").json()["schedules"]
        assert (schedule["name"], schedule["paused"]) == ("reports/daily", True)
        assert '<td data-field="next_fire_at">—</td>' in client.get("/scheduled").text
