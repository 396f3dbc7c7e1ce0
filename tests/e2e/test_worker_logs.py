"""What a person reads from ``conveyor worker`` at its default level (INFO)."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from typing import Any

import asyncpg

from conveyor import Producer, Settings
from tests.conftest import settings_env
from tests.e2e.test_cli_truths import start_worker
from tests.worker_helpers import eventually, prepare

LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")


async def test_default_level_shows_conveyors_own_lines_and_summarised_assignments(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    proc = start_worker(settings_env(live))
    schema = f'"{live.database_schema}"'
    try:
        with Producer(live) as producer:
            job_id = producer.submit("echo.back", {"n": 1}, wait=True)

        async def complete() -> bool:
            state = await db.fetchval(
                f"SELECT state FROM {schema}.jobs WHERE job_id = $1", uuid.UUID(job_id)
            )
            return bool(state == "complete")

        await eventually(complete, what="the job complete")
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    records = [m for m in map(LINE.match, err.splitlines()) if m is not None]
    assert records, err
    # aiokafka and httpx keep their warnings (a new group on Kafka waits for its
    # coordinator), but none of their INFO lines: every request, every subscription.
    info = {m["logger"] for m in records if m["level"] in ("INFO", "DEBUG")}
    assert all(name.startswith("conveyor") for name in info), err
    messages = [m["message"] for m in records]
    assert "assigned normal: 2 partitions" in messages, err
    assert not any(re.search(r"\[\d+(, \d+)*\]", m) for m in messages), err  # no id lists
