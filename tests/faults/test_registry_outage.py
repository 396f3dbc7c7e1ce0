"""Scenario 5: the schema registry is down when a new envelope schema version arrives.

The worker has decoded version 1 (its id is cached); version 2 (one more optional
field, a compatible change) is registered, then the registry goes away (a TCP proxy in
front of it stops) and 300 jobs written with version 2 arrive. The worker cannot fetch
the writer schema: the messages must wait (nothing dead-lettered, no crash, the fetch
loop alive) and complete, once each, when the registry is back.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor import Producer, Settings
from conveyor.schemas.contracts import JOB_ENVELOPE, Contract
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.faults import raw
from tests.faults.harness import Effects, Figures, WorkerProcess, free_port, wait_for, worker_env
from tests.tcp_proxy import TcpProxy
from tests.worker_helpers import prepare

BEFORE = 100
NEW_VERSION_JOBS = 300
OUTAGE_SECONDS = 20.0

ENVELOPE_V2 = Contract.from_schema(
    {
        **json.loads(JOB_ENVELOPE.schema_str),
        "fields": [
            *json.loads(JOB_ENVELOPE.schema_str)["fields"],
            {"name": "origin", "type": ["null", "string"], "default": None},
        ],
    }
)


def _encode_v2(settings: Settings, topic: str) -> tuple[list[str], list[Any]]:
    ids: list[str] = []
    messages: list[Any] = []
    with Serde(settings) as serde:
        for n in range(NEW_VERSION_JOBS):
            record = raw.envelope("fault.effect", json.dumps({"n": n}).encode(), origin="schema v2")
            ids.append(record["job_id"])
            messages.append(
                (
                    record["job_id"].encode(),
                    serde.encode(ENVELOPE_V2, topic, record),
                    raw.job_headers(record),
                )
            )
    return ids, messages


@pytest.mark.timeout(300)
async def test_jobs_in_a_new_schema_version_wait_for_the_registry_and_none_is_dead_lettered(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    url = urllib.parse.urlsplit(schema_registry_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 80)
    await proxy.start()
    live = await prepare(settings.replace(partition_unit=1), f"http://127.0.0.1:{proxy.port}")
    topic = Topology.from_settings(live).job_topic("normal")
    effects = Effects(db, live.database_schema, tmp_path / "effects.log")
    await effects.create()
    worker = WorkerProcess(
        worker_env(live, effects.effects_file), tmp_path / "worker.log", metrics_port=free_port()
    )
    first_pid = worker.pid

    async def dead_lettered() -> int:
        return int(await db.fetchval(f'SELECT count(*) FROM "{live.database_schema}".job_dlq'))

    figures = Figures("registry down, new schema version", jobs=BEFORE + NEW_VERSION_JOBS, faults=1)
    try:

        def submit_v1() -> list[str]:
            with Producer(live) as producer:
                return producer.submit("fault.effect", [{"n": n} for n in range(BEFORE)], wait=True)

        ids = await asyncio.to_thread(submit_v1)
        await wait_for(
            effects.all_of(ids), timeout=120, what="the version-1 jobs", diagnose=worker.output
        )
        new_ids, messages = await asyncio.to_thread(_encode_v2, live, topic)

        await proxy.stop()
        await asyncio.to_thread(raw.produce, live, topic, messages)
        # Fails at the first sign: a message dead-lettered, or the worker unhealthy.
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:
            assert await dead_lettered() == 0
            assert worker.alive, worker.output()
            health, checks = await worker.probe("/healthz")
            assert health == 200, (checks, worker.output())
            await asyncio.sleep(0.5)  # the probe period, as a kubelet would poll
        await proxy.start()
        healed = time.monotonic()
        await wait_for(
            effects.reached(BEFORE + 1), timeout=120, what="a version-2 job", diagnose=worker.output
        )
        figures.recovered(time.monotonic() - healed)
        await wait_for(
            effects.all_of(new_ids), timeout=180, what="every version-2 job", diagnose=worker.output
        )
        ids += new_ids
        assert worker.pid == first_pid
    finally:
        await asyncio.to_thread(worker.stop)
        await proxy.stop()

    dead = await dead_lettered()
    figures.extra["dead_lettered"] = dead
    await effects.tally(ids, figures)
    figures.emit()
    assert dead == 0
    assert (figures.lost, figures.duplicated) == (0, 0)
