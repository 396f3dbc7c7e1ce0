"""A schema registry that is down or lags holds messages back, never dead-letters them
(issue 14, defect 8).

A newer producer writes jobs with an envelope schema version this worker has never read,
so decoding them needs a registry request. While the registry is unreachable (a TCP proxy
in front of it is stopped) or answers 404 for the new id (what a follower that lags its
leader does), the job's partition waits; the fetch loop stays alive, liveness stays green
and readiness says why, and the job runs once the registry answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import struct
import threading
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import asyncpg
import fastavro
import httpx
import pytest
from confluent_kafka import Producer as KafkaProducer

from conveyor import JobContext, Producer, Settings, Worker, embedded
from conveyor.schemas.contracts import JOB_ENVELOPE, Contract
from conveyor.schemas.registry import compat
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.conftest import REGISTRY_SCHEMA
from tests.kafka_helpers import read_topic
from tests.tcp_proxy import TcpProxy
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

OPTIONS = dataclasses.replace(TEST_OPTIONS, metrics_host="127.0.0.1")


def _newer_envelope() -> Contract:
    """The job envelope as a newer producer writes it: one more optional field, so the
    registry gives it a schema id no worker has read yet."""
    schema = json.loads(JOB_ENVELOPE.schema_str)
    schema["fields"].append(
        {"name": f"added_{uuid.uuid4().hex[:8]}", "type": ["null", "string"], "default": None}
    )
    return Contract.from_schema(schema)


class ThreadedProxy:
    """A :class:`TcpProxy` on its own event loop in a thread, like a registry in another
    process: a worker that blocked its own loop on the registry must not also block the
    proxy it talks through."""

    def __init__(self, host: str, port: int) -> None:
        self._proxy = TcpProxy(host, port)
        self.port = self._proxy.port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _on_proxy_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        await asyncio.wrap_future(future)

    async def start(self) -> None:
        await self._on_proxy_loop(self._proxy.start())

    async def stop(self) -> None:
        await self._on_proxy_loop(self._proxy.stop())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
async def registry_proxy(
    settings: Settings, schema_registry_url: str
) -> AsyncIterator[tuple[Settings, Settings, ThreadedProxy]]:
    """Prepared settings, the same settings with the registry reached through a proxy the
    test can stop, and that proxy."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    url = urllib.parse.urlsplit(schema_registry_url)
    proxy = ThreadedProxy(url.hostname or "127.0.0.1", url.port or 80)
    await proxy.start()
    proxied = live.replace(
        schema_registry_url=url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(),
        metrics_port=embedded.free_port(),
    )
    try:
        yield live, proxied, proxy
    finally:
        await proxy.stop()
        proxy.close()


async def _probe(worker: Worker, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{worker.http_port}{path}"
    response = await asyncio.to_thread(httpx.get, url, timeout=30)
    return response.status_code, response.json()["checks"]


def _newer_job(live: Settings, template: bytes) -> tuple[str, bytes, int]:
    """A new job's id, its envelope bytes under a newer schema version, and that id."""
    contract = _newer_envelope()
    topic = Topology.from_settings(live).job_topic("normal")
    with Serde(live) as serde:
        envelope = serde.decode(JOB_ENVELOPE, topic, template)
        job_id = str(uuid.uuid4())
        value = serde.encode(contract, topic, {**envelope, "job_id": job_id})
        return job_id, value, serde.register(contract, topic)


def _write_raw(live: Settings, key: bytes, value: bytes) -> None:
    producer = KafkaProducer({"bootstrap.servers": live.kafka_bootstrap, "log_level": 0})
    producer.produce(Topology.from_settings(live).job_topic("normal"), value=value, key=key)
    assert producer.flush(30) == 0


async def test_a_new_schema_id_waits_out_a_registry_outage_and_then_runs(
    registry_proxy: tuple[Settings, Settings, ThreadedProxy], db: asyncpg.Connection[Any]
) -> None:
    live, proxied, proxy = registry_proxy
    worker = Worker(proxied, priorities=["normal"], concurrency=2, options=OPTIONS)
    ran: list[str] = []

    @worker.handler("reg.job")
    async def handle(ctx: JobContext, payload: Any) -> None:
        ran.append(ctx.job_id)

    async with running(worker):
        with Producer(live) as producer:
            first = producer.submit("reg.job", {"n": 1}, key="k")
        await eventually(lambda: ran == [first], what="the first job to run")
        topic = Topology.from_settings(live).job_topic("normal")
        [template] = read_topic(live.kafka_bootstrap, topic, 1)
        job_id, value, new_id = _newer_job(live, template.value)

        await proxy.stop()  # the registry goes away; then the newer job arrives
        _write_raw(live, b"k", value)
        loop = worker._loop
        assert loop is not None
        await eventually(lambda: loop.registry_problem is not None, what="the partition to wait")
        assert "did not answer" in (loop.registry_problem or "")
        status, checks = await _probe(worker, "/healthz")
        assert status == 200, checks  # the fetch loop is alive: restarting would not help
        status, checks = await _probe(worker, "/readyz")
        assert status == 503
        assert "schema registry" in checks["schema_registry"]
        # An observation window, not a wait for a result: the job neither runs nor dies.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(eventually(lambda: len(ran) > 1), timeout=3.0)
        assert ran == [first]

        await proxy.start()
        await eventually(lambda: ran == [first, job_id], what="the newer job to run")
        await eventually(lambda: loop.registry_problem is None, what="the wait to end")
        assert (await _probe(worker, "/healthz"))[0] == 200
    assert worker.stats.undecodable == 0
    dead = await db.fetchval(f'SELECT count(*) FROM "{live.database_schema}".job_dlq')
    assert dead == 0, "a job the registry could not decode yet was dead-lettered"
    assert new_id > 0


def _framed(contract: Contract, schema_id: int, record: dict[str, Any]) -> bytes:
    """Confluent wire-format bytes naming ``schema_id``, written without any registry."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, contract.parsed, record)
    return b"\x00" + struct.pack(">I", schema_id) + body.getvalue()


async def test_an_id_a_lagging_registry_does_not_know_yet_waits_then_runs(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    """A registry follower that lags answers 404 for an id its leader just gave out. The
    message waits (within ``unknown_schema_wait``) instead of going to the DLQ as raw
    bytes, and runs once the registry knows the id."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    live = live.replace(metrics_port=embedded.free_port())
    worker = Worker(live, priorities=["normal"], concurrency=2, options=OPTIONS)
    ran: list[str] = []

    @worker.handler("reg.job")
    async def handle(ctx: JobContext, payload: Any) -> None:
        ran.append(ctx.job_id)

    async with running(worker):
        with Producer(live) as producer:
            first = producer.submit("reg.job", {"n": 1}, key="k")
        await eventually(lambda: ran == [first], what="the first job to run")
        topic = Topology.from_settings(live).job_topic("normal")
        [template] = read_topic(live.kafka_bootstrap, topic, 1)
        with Serde(live) as serde:
            envelope = serde.decode(JOB_ENVELOPE, topic, template.value)
        contract = _newer_envelope()
        schema_id = 1_000_000 + uuid.uuid4().int % 1_000_000  # beyond the registry's own
        job_id = str(uuid.uuid4())
        _write_raw(live, b"k", _framed(contract, schema_id, {**envelope, "job_id": job_id}))

        loop = worker._loop
        assert loop is not None
        await eventually(lambda: loop.registry_problem is not None, what="the partition to wait")
        assert "unknown to the registry" in (loop.registry_problem or "")
        assert (await _probe(worker, "/healthz"))[0] == 200
        with contextlib.suppress(TimeoutError):  # an observation window: nothing happens
            await asyncio.wait_for(eventually(lambda: len(ran) > 1), timeout=3.0)
        assert ran == [first]

        # The follower catches up: the id is now known.
        await db.execute(
            f'INSERT INTO "{REGISTRY_SCHEMA}".registry_schemas (id, schema_text, fingerprint) '
            "VALUES ($1, $2, $3)",
            schema_id,
            contract.schema_str,
            compat.fingerprint(json.loads(contract.schema_str)),
        )
        await eventually(lambda: ran == [first, job_id], what="the newer job to run")
    assert worker.stats.undecodable == 0
    dead = await db.fetchval(f'SELECT count(*) FROM "{live.database_schema}".job_dlq')
    assert dead == 0, "a good job was dead-lettered as raw bytes"


async def test_an_id_the_registry_never_learns_is_dead_lettered_after_the_wait(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    """Bytes naming an id that stays unknown are permanent once ``unknown_schema_wait``
    has passed: they go to the DLQ, and the jobs behind them run."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    options = dataclasses.replace(OPTIONS, unknown_schema_wait=1.0)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=options)
    ran: list[str] = []

    @worker.handler("reg.job")
    async def handle(ctx: JobContext, payload: Any) -> None:
        ran.append(ctx.job_id)

    _write_raw(live, b"k", b"\x00" + struct.pack(">I", 2_147_483_000) + b"\x02body")
    with Producer(live) as producer:
        behind = producer.submit("reg.job", {"n": 2}, key="k")
    schema = f'"{live.database_schema}"'

    async def dead_lettered() -> bool:
        rows = await db.fetch(f"SELECT error_reason FROM {schema}.job_dlq")
        return [r["error_reason"] for r in rows] == ["Deserialization"]

    async with running(worker):
        await eventually(lambda: ran == [behind], what="the job behind the unknown id to run")
        await eventually(lambda: worker.stats.undecodable == 1, what="the unknown id dead")
        await eventually(dead_lettered, what="the DLQ row of the unknown id")
