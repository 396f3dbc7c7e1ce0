"""Publishing commands to the control topic, such as cancelling a running job.

This is the writing side; every worker reads the topic with ``ControlListener``
(``conveyor.consumer.control``). ``JobStore.cancel`` publishes through
:class:`ControlPublisher` when the job it cancels is already running.
"""

from __future__ import annotations

import datetime as dt

from conveyor.errors import DeliveryError
from conveyor.producer.delivery import DeliveryCore
from conveyor.producer.jobs import Outgoing
from conveyor.schemas.contracts import CONTROL_COMMAND
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology

CONTROL_DELIVERY_TIMEOUT = 10.0
"""Seconds the broker has to acknowledge a control command."""

_RESEND = "(the cancel request is recorded; run cancel again to resend it)"


class ControlPublisher:
    """Publishes control commands and waits for each acknowledgement.

    Blocking: call it from a thread (``asyncio.to_thread``) in async code. Thread-safe:
    librdkafka's producer and the serde both are. Creating one builds a confluent-kafka
    producer and a schema registry client; :meth:`close` releases them. A broker that
    never answers fails the first command within seconds, naming
    ``CONVEYOR_KAFKA_BOOTSTRAP`` (``DeliveryCore``'s ``fail_fast``).

    Args:
        settings: Where Kafka and the schema registry are, and the topic prefix that
            names the control topic.
    """

    def __init__(self, settings: Settings) -> None:
        self._topic = Topology.from_settings(settings).control_topic
        self._serde = Serde(settings)
        self._core = DeliveryCore(
            settings, delivery_timeout=CONTROL_DELIVERY_TIMEOUT, linger_ms=0, fail_fast=True
        )

    def cancel(self, job_id: str, reason: str | None) -> None:
        """Publishes a cancel command for ``job_id`` and waits until the broker has it.

        Args:
            job_id: The job to cancel.
            reason: Why, carried in the command.

        Raises:
            DeliveryError: The command could not be queued, no broker answered, or the
                broker did not acknowledge it within ``CONTROL_DELIVERY_TIMEOUT`` seconds.
        """
        record = {
            "command": "cancel",
            "job_id": job_id,
            "issued_at": dt.datetime.now(dt.UTC),
            "reason": reason,
        }
        value = self._serde.encode(CONTROL_COMMAND, self._topic, record)
        message = Outgoing(job_id, self._topic, job_id.encode(), value, [])
        try:
            self._core.wait(self._core.send([message]))
        except DeliveryError as exc:
            raise DeliveryError(f"the cancel command of job {job_id}: {exc} {_RESEND}") from exc

    def close(self) -> None:
        """Waits for anything still queued, then closes the producer and registry client."""
        try:
            self._core.close()
        finally:
            self._serde.close()


__all__ = ["CONTROL_DELIVERY_TIMEOUT", "ControlPublisher"]
