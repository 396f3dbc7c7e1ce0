"""What a worker checks before it joins any consumer group.

A worker that starts against a registry that does not answer, a schema without its
migrations or a cluster without its topics used to join its groups anyway, then warn
every few seconds and fail every job with a long traceback. These checks run first,
in the order a setup is done (registry, migrations, topics), and each failure is one
``ConveyorError`` whose message says what to run. Nothing is left open when one fails.
"""

from __future__ import annotations

import asyncio

from conveyor import migrations
from conveyor.errors import MigrationError, TopologyError
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology import admin
from conveyor.topology.model import Topology

SHOWN_NAMES = 3
"""Missing migrations or topics named in a message; the rest are counted."""


async def check(settings: Settings, *, database: bool = True) -> None:
    """Checks that the registry answers, the migrations are applied and the topics exist.

    Args:
        settings: What to check.
        database: Also check the migrations (the retry relay alone needs no Postgres).

    Raises:
        RegistryUnavailableError: The schema registry did not answer.
        DatabaseUnavailableError: Postgres cannot be reached.
        MigrationError: Migrations are pending ("run `conveyor migrate`").
        BrokerUnavailableError: No Kafka broker answered.
        TopologyError: Declared topics are missing ("run `conveyor topology apply`").
    """
    with Serde(settings) as serde:
        await asyncio.to_thread(serde.check_reachable)
    pending = await migrations.pending(settings) if database else []
    if pending:
        total = len(migrations.load_migrations())
        raise MigrationError(
            f"schema {settings.database_schema} lacks {len(pending)} of {total} migrations "
            f"({_names(pending)}); run `conveyor migrate`"
        )
    topology = Topology.from_settings(settings)
    plan = await asyncio.to_thread(admin.plan, settings, topology)
    if plan.to_create:
        names = [spec.name for spec in plan.to_create]
        raise TopologyError(
            f"{len(names)} of the {len(topology.topics)} topics are missing on "
            f"{settings.kafka_bootstrap} ({_names(names)}); run `conveyor topology apply`"
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")
