"""`conveyor ui`'s handlers through Starlette's test client, on a real Postgres.

Rows are arranged with SQL; the pages and the JSON API must agree, page by keyset, refuse
what they must refuse, and never run SQL of their own (they call conveyor.ui's queries).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from starlette.testclient import TestClient

from conveyor.settings import Secret, Settings
from conveyor.ui import create_app
from conveyor.ui.security import CSRF_COOKIE, Credentials
from conveyor.ui.state import UiOptions

FAST = 0.05


def _client(settings: Settings, **options: Any) -> TestClient:
    return TestClient(create_app(settings, UiOptions(stream_interval=FAST, **options)))


@pytest.fixture
def client(migrated: Settings) -> Iterator[TestClient]:
    with _client(migrated) as c:
        yield c


async def _jobs(db: asyncpg.Connection[Any], s: Settings, rows: list[dict[str, Any]]) -> list[str]:
    ids = []
    for i, row in enumerate(rows):
        job_id = str(uuid.uuid4())
        await db.execute(
            f'INSERT INTO "{s.database_schema}".jobs (job_id, type, key, tenant_id, priority, '
            "batch_id, state, attempts, created_at, submitted_at, started_at, finished_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, 1, now() - make_interval(secs => $8), "
            "now() - interval '2 s', now() - interval '1 s', "
            "CASE WHEN $7 IN ('complete', 'failed', 'cancelled') THEN now() END)",
            job_id,
            row.get("type", "t.a"),
            row.get("key"),
            row.get("tenant"),
            row.get("priority", "normal"),
            row.get("batch"),
            row.get("state", "complete"),
            float(i),
        )
        ids.append(job_id)
    return ids


async def _dead(db: asyncpg.Connection[Any], s: Settings, **row: Any) -> int:
    entry_id: int = await db.fetchval(
        f'INSERT INTO "{s.database_schema}".job_dlq (original_job_id, type, tenant_id, payload, '
        "content_type, error_reason, attempts, error_history, source_topic, source_partition, "
        "source_offset, priority) VALUES ($1, $2, $3, $4, 'application/json', $5, 3, $6, 't', 0, "
        "$7, 'normal') RETURNING id",
        row.get("job_id", uuid.uuid4()),
        row.get("type", "t.a"),
        row.get("tenant"),
        json.dumps(row.get("payload", {"n": 1})).encode(),
        row.get("reason", "MaxRetries"),
        json.dumps([{"attempt": 1, "error_type": "Boom", "message": "no", "at": None}]),
        row.get("offset", 0),
    )
    return entry_id


async def test_job_search_pages_by_keyset_without_gaps_or_repeats(
    migrated: Settings, db: asyncpg.Connection[Any], client: TestClient
) -> None:
    ids = await _jobs(db, migrated, [{"type": "t.page"}] * 7 + [{"type": "t.other"}] * 2)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"type": "t.page", "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/jobs", params=params).json()
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids[:7]  # newest first: the rows were created 0 s, 1 s, ... ago
    assert page["counts"]["complete"] == 7


async def test_job_search_filters_by_state_key_tenant_and_batch_and_counts_per_state(
    migrated: Settings, db: asyncpg.Connection[Any], client: TestClient
) -> None:
    batch = str(uuid.uuid4())
    ids = await _jobs(
        db,
        migrated,
        [
            {"state": "failed", "key": "k1", "tenant": "acme", "batch": batch},
            {"state": "queued", "key": "k1", "tenant": "acme", "batch": batch},
            {"state": "complete", "key": "k2", "tenant": "other"},
        ],
    )
    body = client.get("/api/jobs", params={"key": "k1", "tenant": "acme"}).json()
    assert [j["job_id"] for j in body["jobs"]] == ids[:2]
    assert body["counts"] == {
        "scheduled": 0,
        "queued": 1,
        "processing": 0,
        "complete": 0,
        "failed": 1,
        "cancelled": 0,
    }
    by_state = client.get("/api/jobs", params={"state": "failed"}).json()
    assert [j["job_id"] for j in by_state["jobs"]] == [ids[0]]
    by_id = client.get("/api/jobs", params={"job_id": ids[2]}).json()
    assert [j["job_id"] for j in by_id["jobs"]] == [ids[2]]
    batch_body = client.get(f"/api/batches/{batch}").json()
    assert (batch_body["total"], batch_body["finished_pct"]) == (2, 50.0)
    html = client.get(f"/batches/{batch}").text
    assert "50.0% finished of 2" in html


def test_a_malformed_filter_or_cursor_is_one_clear_400(client: TestClient) -> None:
    bad_state = client.get("/api/jobs", params={"state": "done"})
    bad_cursor = client.get("/api/jobs", params={"cursor": "!!"})
    bad_time = client.get("/jobs", params={"since": "yesterday"})
    assert bad_state.status_code == 400
    assert "state must be one of" in bad_state.json()["error"]
    assert bad_cursor.status_code == 400
    assert bad_time.status_code == 400
    assert "since must be an ISO 8601 time" in bad_time.text


def test_an_unknown_job_is_404_on_the_api_and_the_page(client: TestClient) -> None:
    assert client.get("/api/stream/jobs/not-a-uuid").status_code == 400
    job_id = str(uuid.uuid4())
    assert client.get(f"/api/jobs/{job_id}").status_code == 404
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 404
    assert f"No job {job_id} is recorded" in page.text


async def test_job_detail_has_a_timeline_with_durations_and_the_dlq_payload(
    migrated: Settings, db: asyncpg.Connection[Any], client: TestClient
) -> None:
    (job_id,) = await _jobs(db, migrated, [{"state": "failed"}])
    schema = migrated.database_schema
    await db.execute(
        f'INSERT INTO "{schema}".job_transitions (job_id, state, at, attempt, error) VALUES '
        "($1, 'processing', now() - interval '3 s', 1, NULL), "
        '($1, \'failed\', now() - interval \'1 s\', 1, \'{"type": "Boom", "message": "x"}\')',
        job_id,
    )
    await _dead(db, migrated, job_id=uuid.UUID(job_id), payload={"to": "ada"})
    job = client.get(f"/api/jobs/{job_id}").json()
    assert [t["state"] for t in job["timeline"]] == ["processing", "failed"]
    assert job["timeline"][0]["seconds"] == pytest.approx(2.0, abs=0.01)
    assert job["errors"][0]["error"]["type"] == "Boom"
    assert json.loads(job["payload"]["text"]) == {"to": "ada"}


async def test_dlq_filters_by_reason_tenant_and_type_and_marks_replayed_entries(
    migrated: Settings, db: asyncpg.Connection[Any], client: TestClient
) -> None:
    a = await _dead(db, migrated, reason="Timeout", tenant="acme", offset=1)
    b = await _dead(db, migrated, reason="MaxRetries", tenant="acme", type="t.b", offset=2)
    await db.execute(
        f'UPDATE "{migrated.database_schema}".job_dlq SET replayed_at = now() WHERE id = $1', b
    )

    def ids(**params: str) -> list[int]:
        return [e["id"] for e in client.get("/api/dlq", params=params).json()["entries"]]

    assert ids() == [a]
    assert ids(show="all") == [b, a]
    assert ids(show="replayed") == [b]
    assert ids(reason="Timeout", tenant="acme") == [a]
    assert ids(type="t.b", show="all") == [b]
    assert client.get("/api/dlq", params={"reason": "Oops"}).status_code == 400
    assert "replayed" in client.get("/dlq", params={"show": "all"}).text
    entry = client.get(f"/api/dlq/{b}").json()
    assert (entry["replayable"], entry["error_history"][0]["message"]) == (False, "no")
    assert client.get("/api/dlq/999999").status_code == 404


def _csrf(client: TestClient) -> str:
    token: str = client.get("/api/csrf").json()["csrf_token"]
    return token


async def test_a_post_needs_the_csrf_token_of_its_cookie(
    migrated: Settings, db: asyncpg.Connection[Any], client: TestClient
) -> None:
    (job_id,) = await _jobs(db, migrated, [{"state": "queued"}])
    no_cookie = client.post(f"/api/jobs/{job_id}/cancel")
    token = _csrf(client)
    wrong = client.post(f"/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": "x" * 43})
    form_without = client.post(f"/jobs/{job_id}/cancel", data={"reason": "x"})
    assert [r.status_code for r in (no_cookie, wrong, form_without)] == [403, 403, 403]
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "queued"
    accepted = client.post(
        f"/jobs/{job_id}/cancel", data={"csrf_token": token}, follow_redirects=False
    )
    assert (accepted.status_code, accepted.headers["location"]) == (303, f"/jobs/{job_id}")
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"


async def test_read_only_hides_actions_and_refuses_them(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    (job_id,) = await _jobs(db, migrated, [{"state": "queued"}])
    entry_id = await _dead(db, migrated)
    with _client(migrated, read_only=True) as client:
        token = _csrf(client)
        page = client.get(f"/jobs/{job_id}").text
        entry = client.get(f"/dlq/{entry_id}").text
        cancel = client.post(f"/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token})
        replay = client.post(f"/api/dlq/{entry_id}/replay", headers={"X-CSRF-Token": token})
        state = client.get(f"/api/jobs/{job_id}").json()["state"]
    assert "cancel-button" not in page
    assert "replay-button" not in entry
    assert "read-only" in page
    assert (cancel.status_code, replay.status_code) == (403, 403)
    assert "read-only" in cancel.json()["error"]
    assert state == "queued"


def test_basic_and_bearer_credentials_are_checked_on_every_path(migrated: Settings) -> None:
    credentials = Credentials.parse("ops:pw", Secret("tok-123"))
    with _client(migrated, credentials=credentials) as client:
        anonymous = client.get("/api/overview")
        wrong = client.get("/", auth=("ops", "nope"))
        static = client.get("/static/conveyor.js")
        basic = client.get("/", auth=("ops", "pw"))
        bearer = client.get("/api/workers", headers={"Authorization": "Bearer tok-123"})
        bad_bearer = client.get("/api/workers", headers={"Authorization": "Bearer tok-12"})
        garbage = client.get("/", headers={"Authorization": "Basic %%%"})
    assert [r.status_code for r in (anonymous, wrong, static, bad_bearer, garbage)] == [401] * 5
    assert anonymous.headers["www-authenticate"].startswith('Basic realm="conveyor"')
    assert (basic.status_code, bearer.status_code) == (200, 200)
    assert bearer.json() == {"workers": []}


def test_every_response_carries_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    cookie = response.headers["set-cookie"]
    assert CSRF_COOKIE in cookie
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()


async def test_the_overview_stream_sends_the_same_data_as_the_api(
    migrated: Settings, db: asyncpg.Connection[Any], client: TestClient
) -> None:
    await _jobs(db, migrated, [{"priority": "high"}, {"priority": "high", "state": "failed"}])
    with client.stream("GET", "/api/stream/overview", params={"events": "1"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    streamed = json.loads(lines[0][len("data: ") :])
    api = client.get("/api/overview").json()
    assert streamed["priorities"]["high"]["complete_1h"] == 1
    assert streamed["priorities"]["high"]["failed_5m"] == 1
    assert streamed["priorities"] == api["priorities"]
    assert len(streamed["series"]["minutes"]) == 61


async def test_tenant_scoping_through_a_non_owner_role_shows_only_that_tenant(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    from conveyor.ui import tenancy

    await _jobs(db, migrated, [{"tenant": "acme", "type": "t.mine"}, {"tenant": "other"}])
    role = f"ui_{uuid.uuid4().hex[:8]}"
    schema = migrated.database_schema
    await db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    try:
        await db.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        await db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
        url = _as_role(migrated.database_url, role, "pw")
        scoped = tenancy.scoped(migrated.replace(ui_database_url=url), "acme")
        await tenancy.check_role(scoped)
        with _client(scoped, tenant="acme") as client:
            jobs = client.get("/api/jobs").json()["jobs"]
            page = client.get("/jobs").text
        with pytest.raises(Exception, match="non-owner role"):
            await tenancy.check_role(
                tenancy.scoped(migrated.replace(ui_database_url=migrated.database_url), "acme")
            )
    finally:
        await db.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}')
        await db.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM {role}')
        await db.execute(f"DROP ROLE {role}")
    assert [(j["tenant_id"], j["type"]) for j in jobs] == [("acme", "t.mine")]
    assert "tenant acme" in page


def _as_role(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


def test_basic_credentials_round_trip_through_the_header() -> None:
    credentials = Credentials.parse("a:b:c", None)
    header = "Basic " + base64.b64encode(b"a:b:c").decode()
    assert credentials.accepts(header)
    assert not credentials.accepts("Basic " + base64.b64encode(b"a:b").decode())
    assert "b:c" not in repr(credentials)
