"""Where the real-stack test mode finds its broker, Postgres and schema registry.

Each service comes from the environment when a variable names it, else is started here
for the test session, as a child process that dies with its parent:

- the broker: ``CONVEYOR_KAFKA_BOOTSTRAP``; else Apache Kafka (KRaft, one node,
  ``conveyor.embedded.ApacheKafka``) when ``java`` 17+ and ``mvn`` or its resolved jars
  are here; else Tansu (``conveyor.embedded.TansuBroker``), which needs only pip.
  ``CONVEYOR_TEST_BROKER=kafka|tansu`` picks the embedded one;
- Postgres: ``CONVEYOR_DATABASE_URL``, else ``conveyor.embedded.EmbeddedPostgres``;
- the registry: ``CONVEYOR_SCHEMA_REGISTRY_URL``, else ``conveyor registry serve``
  (``conveyor.devstack.registry_process``) on the Postgres above, in its own schema.

The embedded services need ``pip install 'conveyor[embedded]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping

from conveyor import embedded, migrations
from conveyor.errors import ConfigurationError
from conveyor.settings import ENV_PREFIX, Settings

#: The variable that picks the embedded broker; not a ``Settings`` field.
BROKER_VARIABLE = "CONVEYOR_TEST_BROKER"
BROKERS = ("kafka", "tansu")


def base_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The ``CONVEYOR_*`` settings of the environment, less the test-only variable.

    Raises:
        ConfigurationError: A variable is unknown or invalid.
    """
    env = os.environ if environ is None else environ
    return Settings.from_env(
        {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and k != BROKER_VARIABLE},
        metrics_port=0,
    )


def embedded_broker_kind(environ: Mapping[str, str] | None = None) -> str:
    """``kafka`` or ``tansu``: the broker :func:`broker` starts when none is named.

    Raises:
        ConfigurationError: ``CONVEYOR_TEST_BROKER`` names no known broker, or names
            ``kafka`` where it cannot run.
    """
    from conveyor.embedded import kafka  # noqa: PLC0415 - probes java only when asked

    env = os.environ if environ is None else environ
    forced = env.get(BROKER_VARIABLE, "").strip().lower()
    if forced and forced not in BROKERS:
        raise ConfigurationError(BROKER_VARIABLE, f"expected kafka or tansu, got {forced!r}")
    reason = kafka.unavailable()
    if forced == "kafka" and reason is not None:
        raise ConfigurationError(BROKER_VARIABLE, f"Apache Kafka was asked for but {reason}")
    if forced:
        return forced
    return "kafka" if reason is None else "tansu"


@contextlib.contextmanager
def broker(settings: Settings, configured: frozenset[str]) -> Iterator[str]:
    """Yields a ready broker's bootstrap servers: the configured one, or one started here."""
    if "kafka_bootstrap" in configured:
        embedded.wait_for_broker(settings.kafka_bootstrap)
        yield settings.kafka_bootstrap
    elif embedded_broker_kind() == "kafka":
        with embedded.ApacheKafka() as kafka:
            yield kafka.bootstrap
    else:
        with embedded.TansuBroker() as tansu:
            yield tansu.bootstrap


@contextlib.contextmanager
def database(settings: Settings, configured: frozenset[str]) -> Iterator[str]:
    """Yields a Postgres DSN: the configured one, or an embedded server's."""
    if "database_url" in configured:
        yield settings.database_url
    else:
        with embedded.EmbeddedPostgres() as pg:
            yield pg.url


@contextlib.contextmanager
def registry(settings: Settings, configured: frozenset[str]) -> Iterator[str]:
    """Yields a schema registry URL: the configured one, or ``conveyor registry serve``.

    A registry started here keeps its tables in a schema of its own on
    ``settings.database_url``, dropped when it stops.
    """
    if "schema_registry_url" in configured:
        yield settings.schema_registry_url
        return
    from conveyor.devstack import registry_process  # noqa: PLC0415 - only when started here
    from conveyor.testing.stack import drop_schema  # noqa: PLC0415 - stack imports us

    own = settings.replace(database_schema=f"registry_{uuid.uuid4().hex[:10]}")
    asyncio.run(migrations.migrate(own))
    try:
        with registry_process(own) as url:
            yield url
    finally:
        asyncio.run(drop_schema(own))
