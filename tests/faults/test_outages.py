"""Scenario 4: the broker's TCP path is cut for 20 s, then Postgres is cut for 30 s.

Both go through a TCP proxy the test stops and starts (``tests/tcp_proxy.py``); the
broker is a private one that advertises the proxy's port, so every client connection,
bootstrap or not, crosses the proxy. During each cut the worker must keep its process
(same pid, ``/healthz`` 200: restarting would not help), report not-ready on ``/readyz``
with the reason, and complete nothing it cannot record; after each cut it resumes by
itself. The recovery time is from the end of a cut to the next completion.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor import Producer, Settings
from conveyor.embedded import kafka
from tests.faults.harness import (
    Effects,
    Figures,
    WorkerProcess,
    free_port,
    wait_for,
    worker_env,
)
from tests.tcp_proxy import TcpProxy
from tests.worker_helpers import prepare

BATCH = 400
BROKER_CUT_SECONDS = 20.0
DATABASE_CUT_SECONDS = 30.0


def _through(proxy: TcpProxy, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{proxy.port}"
    return parts._replace(netloc=f"{credentials}@{host}" if credentials else host).geturl()


def _submit(settings: Settings, first: int, count: int, sleep: float) -> list[str]:
    with Producer(settings) as producer:
        return producer.submit(
            "fault.effect",
            [{"n": n, "sleep": sleep} for n in range(first, first + count)],
            wait=True,
        )


async def _observe(worker: WorkerProcess, seconds: float) -> tuple[set[str], int]:
    """Polls ``/readyz`` and ``/healthz`` for ``seconds``: the not-ready reasons seen, and
    how many liveness answers were not 200."""
    reasons: set[str] = set()
    unhealthy = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert worker.alive, worker.output()
        status, body = await worker.probe("/readyz")
        if status != 200:
            reasons.update(f"{k}: {v}" for k, v in body["checks"].items() if v != "ok")
        if (await worker.probe("/healthz"))[0] != 200:
            unhealthy += 1
        await asyncio.sleep(0.5)  # the probe period, as a kubelet would poll
    return reasons, unhealthy


@pytest.mark.timeout(420)
async def test_broker_and_database_cuts_make_the_worker_wait_not_ready_and_resume(
    settings: Settings,
    schema_registry_url: str,
    db: asyncpg.Connection[Any],
    tmp_path: Path,
    private_kafka: Callable[..., kafka.ApacheKafka],
) -> None:
    broker_proxy_port = free_port()
    node = private_kafka(advertised_port=broker_proxy_port)
    broker_proxy = TcpProxy(node.host, node.port, port=broker_proxy_port)
    pg = urllib.parse.urlsplit(settings.database_url)
    pg_proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    await broker_proxy.start()
    await pg_proxy.start()
    live = await prepare(
        settings.replace(kafka_bootstrap=f"127.0.0.1:{broker_proxy.port}", partition_unit=1),
        schema_registry_url,
    )
    effects = Effects(db, live.database_schema, tmp_path / "effects.log")
    await effects.create()
    worker_settings = live.replace(database_url=_through(pg_proxy, live.database_url))
    worker = WorkerProcess(
        worker_env(worker_settings, effects.effects_file),
        tmp_path / "worker.log",
        metrics_port=free_port(),
    )
    first_pid = worker.pid
    figures = Figures("broker TCP cut 20 s + Postgres cut 30 s", jobs=0, faults=2)
    ids: list[str] = []
    try:
        ids += await asyncio.to_thread(_submit, live, 0, BATCH, 0.0)
        await wait_for(
            effects.all_of(ids), timeout=180, what="the first batch", diagnose=worker.output
        )

        # The broker goes away: nothing to fetch, the worker says so and waits.
        await broker_proxy.stop()
        broker_reasons, broker_unhealthy = await _observe(worker, BROKER_CUT_SECONDS)
        await broker_proxy.start()
        healed = time.monotonic()
        ids += await asyncio.to_thread(_submit, live, BATCH, BATCH, 0.0)
        await wait_for(
            effects.reached(len(ids) - BATCH + 1),
            timeout=180,
            what="progress after the broker cut",
            diagnose=worker.output,
        )
        figures.recovered(time.monotonic() - healed)
        await wait_for(worker.ready(), timeout=120, what="ready after the broker cut")

        # Postgres goes away mid-batch (jobs of 0.2 s: several seconds of work are left):
        # outcomes cannot be recorded, so nothing completes.
        ids += await asyncio.to_thread(_submit, live, 2 * BATCH, BATCH, 0.2)
        await wait_for(
            effects.reached(len(ids) - BATCH + 20),
            timeout=180,
            what="the third batch under way",
            diagnose=worker.output,
        )
        await pg_proxy.stop()
        before = await effects.completed()
        db_reasons, db_unhealthy = await _observe(worker, DATABASE_CUT_SECONDS)
        during = await effects.completed() - before
        await pg_proxy.start()
        healed = time.monotonic()
        await wait_for(
            effects.reached(before + during + 1),
            timeout=180,
            what="progress after the database cut",
            diagnose=worker.output,
        )
        figures.recovered(time.monotonic() - healed)

        await wait_for(effects.all_of(ids), timeout=240, what="every job", diagnose=worker.output)
        await wait_for(worker.ready(), timeout=120, what="ready after the database cut")
        assert worker.pid == first_pid
    finally:
        await asyncio.to_thread(worker.stop)
        await broker_proxy.stop()
        await pg_proxy.stop()

    figures.jobs = len(ids)
    figures.extra.update(
        broker_cut_not_ready=sorted(broker_reasons),
        database_cut_not_ready=sorted(db_reasons),
        unhealthy_answers=broker_unhealthy + db_unhealthy,
        completed_while_database_cut=during,
    )
    await effects.tally(ids, figures)
    figures.emit()
    assert broker_unhealthy == db_unhealthy == 0
    assert any(r.startswith("database:") for r in db_reasons), db_reasons
    assert any(r.startswith("broker:") for r in broker_reasons), broker_reasons
    assert during == 0  # nothing completes that cannot be recorded
    assert (figures.lost, figures.duplicated) == (0, 0)
    assert figures.extra["external_missing"] == 0
