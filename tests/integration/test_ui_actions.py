"""`conveyor ui`'s actions against the real broker, registry and Postgres: replays."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from starlette.testclient import TestClient

from conveyor.settings import Settings
from conveyor.ui import create_app
from conveyor.ui.state import UiOptions
from tests.worker_helpers import prepare


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


async def _dead(db: asyncpg.Connection[Any], s: Settings, job_type: str, offset: int) -> int:
    entry_id: int = await db.fetchval(
        f'INSERT INTO "{s.database_schema}".job_dlq (original_job_id, type, payload, '
        "content_type, error_reason, attempts, error_history, source_topic, source_partition, "
        "source_offset, priority) VALUES ($1, $2, $3, 'application/json', 'MaxRetries', 5, "
        "'[]', 't', 0, $4, 'normal') RETURNING id",
        uuid.uuid4(),
        job_type,
        json.dumps({"n": offset}).encode(),
        offset,
    )
    return entry_id


def _finished(client: TestClient, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.get(f"/api/dlq/replays/{run_id}").json()
        if run["finished"] or time.monotonic() > deadline:
            return run
        time.sleep(0.05)  # the poll interval of a deadline-bounded wait


async def test_replay_all_matching_replays_only_the_matching_pending_entries_with_progress(
    live: Settings, db: asyncpg.Connection[Any]
) -> None:
    bulk = [await _dead(db, live, "t.bulk", n) for n in range(3)]
    other = await _dead(db, live, "t.other", 9)
    with TestClient(create_app(live, UiOptions(stream_interval=0.05))) as client:
        token = client.get("/api/csrf").json()["csrf_token"]
        started = client.post(
            "/api/dlq/replay", json={"type": "t.bulk"}, headers={"X-CSRF-Token": token}
        )
        assert started.status_code == 202
        assert started.json()["total"] == 3
        run = _finished(client, started.json()["id"])
        with client.stream("GET", f"/api/stream/dlq/replays/{run['id']}") as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
        again = client.post(f"/api/dlq/{bulk[0]}/replay", headers={"X-CSRF-Token": token})
        pending = [e["id"] for e in client.get("/api/dlq").json()["entries"]]
        page = client.get("/dlq", params={"show": "all"}).text
    assert (run["replayed"], run["skipped"], run["pct"], run["error"]) == (3, 0, 100.0, None)
    assert events == ["event: end"]
    assert again.status_code == 409
    assert "already replayed" in again.json()["error"]
    assert pending == [other]
    assert page.count('class="replayed"') == 3
