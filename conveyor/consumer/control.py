"""The control topic: commands every worker reads, such as cancelling a running job."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from conveyor.consumer.execution import JobRunner
from conveyor.consumer.kafka import aiokafka_security
from conveyor.errors import ContractError
from conveyor.schemas.contracts import CONTROL_COMMAND
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology

log = logging.getLogger("conveyor.worker")


class ControlListener:
    """Reads the control topic from its end, without a consumer group, so every worker
    sees every command issued while it runs (a cancel for a job that has not started is
    already recorded in Postgres, so older commands are not needed).

    Args:
        settings: Broker settings.
        serde: Decodes commands.
        runner: Receives cancels.
    """

    def __init__(self, settings: Settings, *, serde: Serde, runner: JobRunner) -> None:
        self._settings = settings
        self._topic = Topology.from_settings(settings).control_topic
        self._serde = serde
        self._runner = runner
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Assigns every partition of the control topic, positioned at its end."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=None,
            client_id=f"conveyor-control-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            **aiokafka_security(self._settings),
        )
        await consumer.start()
        partitions = consumer.partitions_for_topic(self._topic) or {0}
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve "end" now, before any command is issued
        self._consumer = consumer

    async def run(self) -> None:
        """Applies commands until cancelled."""
        assert self._consumer is not None, "start() first"
        while True:
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    self._apply(record.value or b"")

    def _apply(self, value: bytes) -> None:
        try:
            command: dict[str, Any] = self._serde.decode(CONTROL_COMMAND, self._topic, value)
        except ContractError as exc:
            log.error("ignoring an undecodable control command: %s", exc)
            return
        if command["command"] == "cancel":
            job_id = str(command["job_id"])
            if self._runner.cancel(job_id, command.get("reason")):
                log.info("job %s: cancel requested; interrupting it", job_id)
        else:
            log.warning("ignoring unknown control command %r", command["command"])

    async def stop(self) -> None:
        """Closes the consumer."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def run_until_cancelled(listener: ControlListener) -> None:
    """Runs the listener, logging (not raising) a failure so jobs keep running."""
    try:
        await listener.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the control listener stopped; cancels of running jobs will not apply")
