"""``conveyor registry serve``: a Confluent Schema Registry compatible service on Postgres.

``app`` holds the REST endpoints, ``http`` request parsing, response shapes and error
handlers, ``store`` the Postgres queries, ``compat`` schema identity and the
compatibility rules. Any Confluent-compatible registry works with conveyor; this one
saves running another service next to Kafka and Postgres.
"""

from __future__ import annotations

from conveyor.schemas.registry.app import create_app
from conveyor.schemas.registry.compat import COMPATIBILITY_LEVELS, DEFAULT_COMPATIBILITY
from conveyor.schemas.registry.http import MEDIA_TYPE
from conveyor.schemas.registry.store import TABLES, RegistryError, RegistryStore, missing_tables

__all__ = [
    "COMPATIBILITY_LEVELS",
    "DEFAULT_COMPATIBILITY",
    "MEDIA_TYPE",
    "TABLES",
    "RegistryError",
    "RegistryStore",
    "create_app",
    "missing_tables",
]
