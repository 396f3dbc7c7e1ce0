"""Scenario 6: 10,000 fuzzed messages mixed with 1,000 good jobs on one worker.

The corpus (``fuzz_corpus.py``) is built from a fixed seed. Asserted: every bad message
has a ``job_dlq`` row with a reason (raw ones found by their source offset, decodable
ones by their job id), every good job completes exactly once, and the worker never
restarts and stays healthy (``/healthz`` 200 at every poll, the same pid throughout).
Two kinds have scenarios of their own: schema ids the registry never issued (looked up
through a slow registry, so a lookup that blocks the worker shows), and a job type
holding a NUL, which Postgres refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor import Settings
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.faults import fuzz_corpus, raw
from tests.faults.harness import Effects, Figures, WorkerProcess, free_port, wait_for, worker_env
from tests.tcp_proxy import TcpProxy
from tests.worker_helpers import prepare

GOOD = 1000
SEED = 14


class HealthWatch:
    """Polls ``/healthz`` once a second in the background; counts what is not 200."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.polls = 0
        self.failures: list[str] = []

    async def run(self) -> None:
        while True:
            try:
                status, body = await self.worker.probe("/healthz")
            except Exception as exc:  # no answer is a failed probe too
                status, body = 0, {"error": repr(exc)}
            self.polls += 1
            if status != 200:
                self.failures.append(f"{status} {body}")
            await asyncio.sleep(1.0)  # the probe period, as a kubelet would poll


async def run_fuzz(
    settings: Settings,
    registry_url: str,
    db: asyncpg.Connection[Any],
    tmp_path: Path,
    *,
    counts: Mapping[str, int],
    good: int,
    timeout: float,
    unknown_schema_wait: float | None = None,
) -> Figures:
    """Writes the corpus to a running worker's topic and waits, failing fast on an unhealthy
    answer, until every good job is complete and every bad message is in ``job_dlq``;
    asserts exactly that, and returns the figures. ``unknown_schema_wait`` overrides the
    worker's (the effects app's 2 s) for messages naming schema ids the registry lacks."""
    live = await prepare(settings.replace(partition_unit=1), registry_url)
    topic = Topology.from_settings(live).job_topic("normal")
    schema = f'"{live.database_schema}"'
    effects = Effects(db, live.database_schema, tmp_path / "effects.log")
    await effects.create()

    def build() -> list[fuzz_corpus.Message]:
        with Serde(live) as serde:
            return fuzz_corpus.build(serde, topic, good=good, seed=SEED, counts=counts)

    corpus = await asyncio.to_thread(build)
    bad = [m for m in corpus if not m.good]
    good_ids = [m.job_id for m in corpus if m.good and m.job_id]
    env = worker_env(live, effects.effects_file)
    if unknown_schema_wait is not None:
        env["FAULTS_UNKNOWN_SCHEMA_WAIT"] = str(unknown_schema_wait)
    worker = WorkerProcess(env, tmp_path / "worker.log", metrics_port=free_port())
    first_pid = worker.pid
    await wait_for(worker.ready(), timeout=120, what="the worker ready", diagnose=worker.output)
    watch = HealthWatch(worker)
    watching = asyncio.create_task(watch.run())

    async def dead_lettered() -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {schema}.job_dlq"))

    async def settled() -> bool:
        assert not watch.failures, watch.failures[:3]  # fail fast: it never recovers alone
        assert worker.alive, worker.output()
        return await effects.completed_among(good_ids) == len(good_ids) and (
            await dead_lettered() >= len(bad)
        )

    try:
        placed = await asyncio.to_thread(
            raw.produce, live, topic, [(m.key, m.value, m.headers) for m in corpus]
        )
        await wait_for(
            settled, timeout=timeout, what="every message settled", diagnose=worker.output
        )
        assert worker.pid == first_pid
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await asyncio.to_thread(worker.stop)

    raw_offsets = {p for m, p in zip(corpus, placed, strict=True) if not m.decodable}
    hostile_ids = {m.job_id for m in bad if m.job_id}
    rows = await db.fetch(
        f"SELECT original_job_id::text AS job_id, source_partition, source_offset, error_reason "
        f"FROM {schema}.job_dlq"
    )
    found_raw = {(r["source_partition"], r["source_offset"]) for r in rows if r["job_id"] is None}
    found_ids = {r["job_id"] for r in rows if r["job_id"] is not None}
    figures = Figures("fuzzed messages", jobs=good, faults=len(bad))
    figures.extra.update(
        corpus=dict(fuzz_corpus.kinds(corpus)),
        dlq_rows=len(rows),
        dlq_reasons=dict(Counter(r["error_reason"] for r in rows)),
        missing_from_dlq=len(raw_offsets - found_raw) + len(hostile_ids - found_ids),
        healthz_polls=watch.polls,
        healthz_failures=len(watch.failures),
    )
    await effects.tally(good_ids, figures)
    figures.emit()
    assert raw_offsets <= found_raw
    assert hostile_ids <= found_ids
    assert len(rows) == len(bad)
    assert all(r["error_reason"] for r in rows)
    assert (figures.lost, figures.duplicated) == (0, 0)
    return figures


@pytest.mark.timeout(480)
async def test_fuzzed_messages_are_dead_lettered_and_good_jobs_complete_on_a_healthy_worker(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await run_fuzz(
        settings,
        schema_registry_url,
        db,
        tmp_path,
        counts=fuzz_corpus.KINDS,
        good=GOOD,
        timeout=360,
    )


@pytest.mark.timeout(420)
async def test_unknown_schema_ids_are_dead_lettered_without_stalling_a_slow_registry_worker(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """40 messages naming schema ids the registry never issued, among 200 good jobs, with
    the registry answering in 0.5 s (a TCP proxy holds each answer): each id is one
    lookup, and no lookup may stall the worker's event loop (``/healthz`` stays 200).

    The worker waits 0.2 s, not the app's 2 s, before it takes an id as truly unknown:
    each message is still looked up twice (the wait counts from the first answer), but
    holds its partition about 1 s instead of 2.7 s. The lookups of one priority's fetch
    loop run one at a time, 0.5 s each here, so the 80 of them take 40 s whatever the
    partition count."""
    url = urllib.parse.urlsplit(schema_registry_url)
    slow = TcpProxy(url.hostname or "127.0.0.1", url.port or 80, delay=0.5)
    await slow.start()
    try:
        await run_fuzz(
            settings,
            f"http://127.0.0.1:{slow.port}",
            db,
            tmp_path,
            counts={fuzz_corpus.UNKNOWN_SCHEMA_ID: 40},
            good=200,
            timeout=240,
            unknown_schema_wait=0.2,
        )
    finally:
        await slow.stop()


@pytest.mark.timeout(300)
async def test_a_job_type_postgres_refuses_is_dead_lettered_not_retried_forever(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    """20 such jobs (more than the worker's 16 slots) among 200 good ones."""
    await run_fuzz(
        settings,
        schema_registry_url,
        db,
        tmp_path,
        counts={fuzz_corpus.NUL_IN_TYPE: 20},
        good=200,
        timeout=45,
    )
