"""`conveyor ui` in headless Chromium against a real broker, Postgres and worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import zoneinfo
from typing import Any

import asyncpg
from playwright.async_api import Browser, expect

from conveyor import JobContext, PermanentError, Producer, Settings
from conveyor.consumer.worker import Worker
from conveyor.jobstore import JobStore
from tests.browser.conftest import AUTH, screenshot_path
from tests.worker_helpers import TEST_OPTIONS, eventually, running

WAIT_MS = 60_000


async def _state(store: JobStore, job_id: str) -> str:
    return (await store.status(job_id)).state


async def test_overview_counts_completed_jobs_live_while_a_worker_runs(
    live: Settings, ui_url: str, browser: Browser
) -> None:
    """The table changes without a reload: the stream brings each new count."""
    worker = Worker(live, priorities=["normal", "high"], concurrency=4, options=TEST_OPTIONS)

    @worker.handler("ui.ok")
    async def ok(ctx: JobContext, payload: Any) -> dict[str, Any]:
        return {"n": payload["n"]}

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{ui_url}/")
    normal = page.locator('tr[data-priority="normal"]')
    await expect(normal.locator('td[data-field="complete_5m"]')).to_have_text("0")
    with Producer(live) as producer:
        for n in range(12):
            producer.submit("ui.ok", {"n": n}, priority="normal" if n % 3 else "high")
    # Nobody consumes yet: the jobs wait on their topics as the groups' lag.
    await expect(normal.locator('td[data-field="lag"]')).to_have_text("8", timeout=WAIT_MS)
    async with running(worker):
        await expect(normal.locator('td[data-field="complete_5m"]')).to_have_text(
            "8", timeout=WAIT_MS
        )
        await expect(
            page.locator('tr[data-priority="high"] td[data-field="complete_5m"]')
        ).to_have_text("4", timeout=WAIT_MS)
        await expect(normal.locator('td[data-field="lag"]')).to_have_text("0", timeout=WAIT_MS)
        await expect(page.locator("#chart-complete polyline.p-normal")).to_have_count(1)
        # The wait chart marks normal's median: a dot for one minute, a line for more.
        marks = "#chart-wait circle.p-normal, #chart-wait polyline.p-normal[points*=' ']"
        await expect(page.locator(marks).first).to_be_attached()
        await page.screenshot(path=screenshot_path("overview"), full_page=True)


async def test_a_job_found_by_id_shows_its_timeline_and_result(
    live: Settings, ui_url: str, browser: Browser
) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)

    @worker.handler("ui.report")
    async def report(ctx: JobContext, payload: Any) -> dict[str, Any]:
        await ctx.report_progress(100, "written")
        return {"rows": 42}

    with Producer(live) as producer:
        job_id = producer.submit("ui.report", {"month": "2026-11"}, key="acct-7")
        for n in range(5):
            producer.submit("ui.report", {"month": f"2026-0{n + 1}"}, key=f"acct-{n}")
    async with running(worker), JobStore(live) as store:
        await eventually(
            lambda: _is(store, job_id, "complete"), timeout=60, what="the job complete"
        )
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{ui_url}/jobs")
    await page.screenshot(path=screenshot_path("jobs"), full_page=True)
    await page.fill('input[name="job_id"]', job_id)
    await page.click('#job-search button[type="submit"]')
    link = page.locator(f'#jobs-table a[href="/jobs/{job_id}"]')
    await expect(link).to_have_count(1)
    await expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    await link.click()
    await expect(page.locator("#job-state")).to_have_text("complete")
    timeline = page.locator("#job-timeline li .state")
    await expect(timeline).to_contain_text(["processing", "complete"])
    await expect(timeline.last).to_have_text("complete")
    await expect(page.locator("#job-result")).to_contain_text('"rows": 42')
    await expect(page.locator("#job-key")).to_have_text("acct-7")
    await page.screenshot(path=screenshot_path("job"), full_page=True)


async def _is(store: JobStore, job_id: str, state: str) -> bool:
    return await _state(store, job_id) == state


async def test_cancel_from_the_job_page_interrupts_the_running_job(
    live: Settings, ui_url: str, browser: Browser
) -> None:
    """The button posts with the page's CSRF token; the page then follows the job to its end."""
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    started = asyncio.Event()

    @worker.handler("ui.forever")
    async def forever(ctx: JobContext, payload: Any) -> None:
        await ctx.report_progress(30, "encoding")
        started.set()
        await asyncio.Event().wait()  # runs until interrupted

    with Producer(live) as producer:
        job_id = producer.submit("ui.forever", {})
    async with running(worker), JobStore(live) as store:
        await asyncio.wait_for(started.wait(), 60)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{ui_url}/jobs/{job_id}")
        await expect(page.locator("#job-state")).to_have_text("processing")
        await expect(page.locator("#job-progress-text")).to_contain_text("30% encoding")
        await page.click("#cancel-button")
        await expect(page.locator("#job-state")).to_have_text("cancelled", timeout=WAIT_MS)
        assert await _state(store, job_id) == "cancelled"
        await expect(page.locator("#job-timeline li .state").last).to_have_text("cancelled")
        await expect(page.locator("#cancel-form")).to_be_hidden()
        await page.screenshot(path=screenshot_path("job-cancelled"), full_page=True)


async def test_a_replayed_dlq_entry_is_marked_and_its_job_completes(
    live: Settings, ui_url: str, browser: Browser
) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    fixed = asyncio.Event()

    @worker.handler("ui.flaky")
    async def flaky(ctx: JobContext, payload: Any) -> str:
        if not fixed.is_set():
            raise PermanentError("the upstream refused the invoice")
        return "sent"

    with Producer(live) as producer:
        job_id = producer.submit("ui.flaky", {"invoice": 17}, tenant_id="acme")
    async with running(worker), JobStore(live) as store:
        await eventually(lambda: _dead(store), timeout=60, what="the DLQ entry")
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{ui_url}/dlq")
        await expect(page.locator("#dlq-matching")).to_have_text("1")
        await page.screenshot(path=screenshot_path("dlq"), full_page=True)
        await page.click("#dlq-table tbody a >> nth=0")
        await expect(page.locator("#entry-payload")).to_contain_text('"invoice": 17')
        await expect(page.locator(".err-msg").first).to_contain_text("upstream refused")
        await page.screenshot(path=screenshot_path("dlq-entry"), full_page=True)
        fixed.set()
        await page.click("#replay-button")
        await expect(page.locator("#entry-status")).to_contain_text("replayed")
        await expect(page.locator("#replay-button")).to_have_count(0)
        await page.click("#entry-job")
        await expect(page.locator("#job-state")).to_have_text("complete", timeout=WAIT_MS)
        assert await _state(store, job_id) == "complete"


async def _dead(store: JobStore) -> bool:
    return len(await store.dlq_list()) == 1


async def test_a_wrong_password_gets_401_and_the_right_one_the_page(
    authed_ui_url: str, browser: Browser
) -> None:
    user, password = AUTH.split(":")
    wrong = await browser.new_context(http_credentials={"username": user, "password": "nope"})
    response = await (await wrong.new_page()).goto(f"{authed_ui_url}/")
    assert response is not None
    assert response.status == 401
    right = await browser.new_context(http_credentials={"username": user, "password": password})
    page = await right.new_page()
    response = await page.goto(f"{authed_ui_url}/")
    assert response is not None
    assert response.status == 200
    await expect(page.locator("#overview-table")).to_be_visible()


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    live: Settings, ui_url: str, browser: Browser, db: asyncpg.Connection[Any]
) -> None:
    job_id = await _insert_job(db, live, state="queued")
    page = await browser.new_page()
    await page.goto(f"{ui_url}/jobs/{job_id}")  # the browser now holds the CSRF cookie
    refused = await page.request.post(f"{ui_url}/jobs/{job_id}/cancel", form={"x": "1"})
    assert refused.status == 403
    assert "CSRF" in await refused.text()
    assert await db.fetchval(_STATE.format(schema=live.database_schema), job_id) == "queued"
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    accepted = await page.request.post(
        f"{ui_url}/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token}
    )
    assert accepted.status == 200
    assert await db.fetchval(_STATE.format(schema=live.database_schema), job_id) == "cancelled"


_STATE = 'SELECT state FROM "{schema}".jobs WHERE job_id = $1'
SCRIPT = "<script>window.__pwned = 1</script>"
IMG = '<img src=x onerror="window.__pwned = 2">'


async def _insert_job(db: asyncpg.Connection[Any], s: Settings, *, state: str) -> str:
    row = await db.fetchrow(
        f'INSERT INTO "{s.database_schema}".jobs (job_id, type, key, state, priority) '
        "VALUES (gen_random_uuid(), $1, $2, $3, 'normal') RETURNING job_id",
        "ui.evil",
        IMG,
        state,
    )
    assert row is not None
    return str(row["job_id"])


async def test_a_script_in_a_payload_type_key_or_error_renders_as_inert_text(
    live: Settings, ui_url: str, browser: Browser, db: asyncpg.Connection[Any]
) -> None:
    job_id = await _insert_job(db, live, state="failed")
    history = json.dumps([{"attempt": 1, "error_type": "Boom", "message": SCRIPT, "at": None}])
    entry_id = await db.fetchval(
        f'INSERT INTO "{live.database_schema}".job_dlq (original_job_id, type, key, payload, '
        "content_type, error_reason, attempts, error_history, source_topic, source_partition, "
        "source_offset) VALUES ($1, $2, $3, $4, 'application/json', 'Permanent', 1, $5, 't', 0, 0) "
        "RETURNING id",
        job_id,
        SCRIPT,
        IMG,
        json.dumps({"html": SCRIPT, "img": IMG}).encode(),
        history,
    )
    page = await browser.new_page()
    for path in (f"/dlq/{entry_id}", "/dlq", f"/jobs/{job_id}", f"/jobs?key={IMG}"):
        await page.goto(f"{ui_url}{path}")
        assert await page.evaluate("window.__pwned") is None, path
        assert await page.locator("main script").count() == (1 if path.startswith("/jobs/") else 0)
        assert await page.locator("main img").count() == 0, path
    await page.goto(f"{ui_url}/dlq/{entry_id}")
    await expect(page.locator("#entry-payload")).to_contain_text(SCRIPT)
    await expect(page.locator(".err-msg")).to_have_text(SCRIPT)


async def test_workers_page_lists_the_running_worker_and_topology_shows_the_plan(
    live: Settings, ui_url: str, browser: Browser
) -> None:
    worker = Worker(live, priorities=["normal", "low"], concurrency=3, options=TEST_OPTIONS)
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    async with running(worker):
        await eventually(lambda: worker.joined, timeout=60, what="the worker joined")

        async def owns_three() -> bool:
            # 2 partitions of normal and 1 of low (partition unit 1), all this worker's.
            rows = (await page.request.get(f"{ui_url}/api/workers")).json()
            return [len(w["partitions"]) for w in (await rows)["workers"]] == [3]

        await eventually(owns_three, timeout=60, what="a heartbeat with 3 partitions")
        row = page.locator(f'tr[data-worker="{worker.worker_id}"]')
        await page.goto(f"{ui_url}/workers")
        await expect(row.locator(".state")).to_have_text("live")
        await expect(row).to_contain_text("normal, low")
        await expect(row.locator("td.partitions")).to_contain_text("3:")
        await page.screenshot(path=screenshot_path("workers"), full_page=True)
    await page.goto(f"{ui_url}/workers")
    await expect(row.locator(".state")).to_have_text("stopped")
    await page.goto(f"{ui_url}/topology")
    await expect(page.locator("#plan-summary")).to_contain_text("0 to create")
    await expect(page.locator("#topics-table .state").first).to_have_text("in sync")
    await page.screenshot(path=screenshot_path("topology"), full_page=True)


async def test_replay_all_matching_shows_live_progress_and_marks_every_entry(
    live: Settings, ui_url: str, browser: Browser, db: asyncpg.Connection[Any]
) -> None:
    for offset in range(3):
        await db.execute(
            f'INSERT INTO "{live.database_schema}".job_dlq (original_job_id, type, payload, '
            "content_type, error_reason, attempts, error_history, source_topic, "
            "source_partition, source_offset, priority) VALUES (gen_random_uuid(), 'ui.bulk', "
            "'{}'::bytea, 'application/json', 'Timeout', 5, '[]', 't', 0, $1, 'normal')",
            offset,
        )
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{ui_url}/dlq?type=ui.bulk&reason=Timeout")
    await expect(page.locator("#dlq-matching")).to_have_text("3")
    await page.click("#replay-all-button")
    await expect(page.locator("#replay-run-text")).to_have_text(
        "3 of 3 replayed · done", timeout=WAIT_MS
    )
    await page.goto(f"{ui_url}/dlq?type=ui.bulk&show=all")
    await expect(page.locator("#dlq-table tr.replayed")).to_have_count(3)
    await expect(page.locator("#dlq-table tr.pending")).to_have_count(0)


_SCHEDULE = 'SELECT paused, next_fire_at FROM "{schema}".schedules WHERE name = $1'
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def _utc_text(when: dt.datetime) -> str:
    """A time as the pages print it: UTC, to the second."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def test_a_schedule_declared_by_a_worker_is_paused_and_resumed_from_the_scheduled_page(
    live: Settings, ui_url: str, browser: Browser, db: asyncpg.Connection[Any]
) -> None:
    """The row shows the name, cron, zone and next fire; Pause and Resume are the page's
    own forms (CSRF field included), and Postgres holds what the page then shows."""
    name = "nightly report"  # a space: the form's action must be URL-encoded
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    worker.schedule(name, cron="30 6 * * *", type="ui.nightly", timezone="Europe/Paris")

    @worker.handler("ui.nightly")
    async def nightly(ctx: JobContext, payload: Any) -> None:
        return None

    query = _SCHEDULE.format(schema=live.database_schema)
    async with running(worker):

        async def stored() -> bool:
            return await db.fetchrow(query, name) is not None

        await eventually(stored, timeout=60, what="the worker's schedule row")
        row = await db.fetchrow(query, name)
        assert row is not None
        assert row["paused"] is False
        next_fire: dt.datetime = row["next_fire_at"]
        # 06:30 in Paris, whatever the UTC offset that day, within the next day.
        assert next_fire.astimezone(PARIS).time() == dt.time(6, 30)
        assert dt.timedelta(0) < next_fire - dt.datetime.now(dt.UTC) <= dt.timedelta(days=1)

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{ui_url}/scheduled")
        schedule = page.locator(f'#schedules-table tr[data-schedule="{name}"]')
        await expect(schedule).to_have_count(1)
        await expect(schedule.locator('td[data-field="name"]')).to_have_text(name)
        await expect(schedule.locator('td[data-field="cron"]')).to_have_text("30 6 * * *")
        await expect(schedule.locator('td[data-field="timezone"]')).to_have_text("Europe/Paris")
        await expect(schedule.locator('td[data-field="next_fire_at"]')).to_have_text(
            _utc_text(next_fire)
        )
        await expect(schedule.locator('td[data-field="state"]')).to_have_text("active")
        await page.screenshot(path=screenshot_path("scheduled"), full_page=True)

        await schedule.get_by_role("button", name="Pause").click()
        await expect(schedule.locator('td[data-field="state"]')).to_have_text("paused")
        await expect(page).to_have_url(f"{ui_url}/scheduled")
        await expect(schedule.get_by_role("button", name="Pause")).to_have_count(0)
        row = await db.fetchrow(query, name)
        assert row is not None
        assert row["paused"] is True

        await schedule.get_by_role("button", name="Resume").click()
        await expect(schedule.locator('td[data-field="state"]')).to_have_text("active")
        await expect(schedule.get_by_role("button", name="Resume")).to_have_count(0)
        row = await db.fetchrow(query, name)
        assert row is not None
        assert row["paused"] is False
        # Resuming sets the next fire to the first tick after now, which the page shows.
        assert row["next_fire_at"].astimezone(PARIS).time() == dt.time(6, 30)
        await expect(schedule.locator('td[data-field="next_fire_at"]')).to_have_text(
            _utc_text(row["next_fire_at"])
        )
