"""The plugin's real-stack fixtures run on the session's services, not services of their own.

``conveyor.testing.plugin`` would start an embedded broker, Postgres and registry when the
environment names none; the suite already runs one of each, so these overrides (the way
a user brings their own services) hand those to ``conveyor_settings``.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def conveyor_kafka_bootstrap(kafka_bootstrap: str) -> str:
    """The session's broker."""
    return kafka_bootstrap


@pytest.fixture(scope="session")
def conveyor_database_url(database_url: str) -> str:
    """The session's Postgres."""
    return database_url


@pytest.fixture(scope="session")
def conveyor_schema_registry_url(schema_registry_url: str) -> str:
    """The session's schema registry."""
    return schema_registry_url
