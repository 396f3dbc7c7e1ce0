"""The services a benchmark run needs, and one isolated workspace per scenario.

Services come, in order, from the environment (``CONVEYOR_KAFKA_BOOTSTRAP``,
``CONVEYOR_DATABASE_URL``, ``CONVEYOR_SCHEMA_REGISTRY_URL``, ``BENCH_REDIS_URL``), then
from the local Postgres at 127.0.0.1:5432, and otherwise are started here: Apache Kafka
when Java and Maven are here, else Tansu (``CONVEYOR_TEST_BROKER=kafka|tansu`` forces one,
see ``conveyor.embedded.choice``); a durable embedded Postgres; ``conveyor registry serve``;
and Debian's ``redis-server`` for Celery and Dramatiq. Each scenario then gets its own
topic prefix and Postgres schema, like a test, so scenarios never read each other's jobs,
and its schema is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg

from conveyor import devstack, embedded, migrations
from conveyor.db import quote_ident
from conveyor.embedded import choice
from conveyor.embedded import redis as embedded_redis
from conveyor.settings import Settings, explicitly_set
from conveyor.topology import admin

#: The scenarios' Kafka timeouts: short, so a scenario's group settles quickly on either broker.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000


@dataclasses.dataclass(frozen=True)
class Stack:
    """The running services of one benchmark run.

    Args:
        settings: Settings pointing at the broker, Postgres and registry.
        origins: Where each service came from, by name (kafka, postgres, registry, redis).
        broker: ``kafka`` (Apache Kafka, named or started) or ``tansu``.
    """

    settings: Settings
    origins: dict[str, str]
    broker: str = "kafka"


@contextlib.contextmanager
def services() -> Iterator[Stack]:
    """Starts what the environment does not name; yields the stack, stops it on exit."""
    configured = set(explicitly_set())
    settings = Settings.from_env(database_schema=f"bench_registry_{uuid.uuid4().hex[:8]}")
    origins: dict[str, str] = {}
    broker = "kafka"
    with contextlib.ExitStack() as stack:
        if "kafka_bootstrap" not in configured:
            local = stack.enter_context(choice.local_broker())
            settings = settings.replace(kafka_bootstrap=local.bootstrap)
            configured.add("kafka_bootstrap")
            origins["kafka"], broker = local.where, local.kind
        if "database_url" not in configured and asyncio.run(
            embedded.postgres_answers(embedded.LOCAL_POSTGRES_URL)
        ):
            settings = settings.replace(database_url=embedded.LOCAL_POSTGRES_URL)
            configured.add("database_url")
            origins["postgres"] = "local server"
        origins["redis"] = stack.enter_context(_redis())
        live, started = stack.enter_context(devstack.dev_stack(settings, frozenset(configured)))
        origins = {**{s.name: s.origin for s in started}, **origins}
        try:
            yield Stack(settings=live, origins=origins, broker=broker)
        finally:
            # The registry kept its tables in this schema (none when the env names one).
            asyncio.run(drop_schema(live.database_url, live.database_schema))


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    """Names where Redis comes from; starts ``redis-server`` when BENCH_REDIS_URL is unset."""
    if os.environ.get("BENCH_REDIS_URL"):
        yield "BENCH_REDIS_URL"
        return
    reason = embedded_redis.unavailable()
    if reason is not None:
        yield f"none: {reason}"
        return
    with embedded.RedisServer() as server:
        # Child processes (the Celery and Dramatiq workers) inherit it.
        os.environ["BENCH_REDIS_URL"] = server.url
        try:
            yield f"redis-server on port {server.port}"
        finally:
            os.environ.pop("BENCH_REDIS_URL", None)


async def drop_schema(database_url: str, schema: str) -> None:
    """Drops a Postgres schema and everything in it."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def workspace(stack: Stack, name: str, **changes: Any) -> AsyncIterator[Settings]:
    """Fresh topics and a fresh Postgres schema for one scenario; the schema is dropped after.

    Args:
        stack: The running services.
        name: A short scenario name, part of the prefix and schema.
        **changes: Further settings (``partition_unit`` for instance).
    """
    suffix = uuid.uuid4().hex[:8]
    settings = stack.settings.replace(
        topic_prefix=f"bench-{name}-{suffix}",
        database_schema=f"bench_{name}_{suffix}",
        **changes,
    )
    await asyncio.to_thread(admin.apply, settings)
    await migrations.migrate(settings)
    try:
        yield settings
    finally:
        await drop_schema(settings.database_url, settings.database_schema)
        await asyncio.to_thread(delete_topics, settings)


def delete_topics(settings: Settings) -> None:
    """Deletes a scenario's topics, so a memory-only broker gives the memory back.

    Best effort: a broker that refuses only keeps them.
    """
    from confluent_kafka.admin import AdminClient

    admin_client = AdminClient({**settings.kafka_config(), "log_level": 0})
    names = [
        t
        for t in admin_client.list_topics(timeout=10).topics
        if t.startswith(settings.topic_prefix + ".")
    ]
    if not names:
        return
    for future in admin_client.delete_topics(names, operation_timeout=10).values():
        with contextlib.suppress(Exception):
            future.result()


def worker_env(settings: Settings) -> dict[str, str]:
    """The ``CONVEYOR_*`` variables that point a child process at a scenario's workspace."""
    return {
        "CONVEYOR_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVEYOR_DATABASE_URL": settings.database_url,
        "CONVEYOR_DATABASE_SCHEMA": settings.database_schema,
        "CONVEYOR_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "CONVEYOR_TOPIC_PREFIX": settings.topic_prefix,
        "CONVEYOR_PARTITION_UNIT": str(settings.partition_unit),
    }
