"""Publishing commands to the control topic, such as cancelling a running job.

This is the writing side; every worker reads the topic with ``ControlListener``
(``conveyor.consumer.control``). ``JobStore.cancel`` publishes through
:class:`ControlPublisher` when the job it cancels is already running.
"""

from __future__ import annotations

import datetime as dt

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as KafkaProducer

from conveyor.errors import DeliveryError
from conveyor.producer.delivery import EXPIRY_MARGIN, producer_config
from conveyor.schemas.contracts import CONTROL_COMMAND
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology

CONTROL_DELIVERY_TIMEOUT = 10.0
"""Seconds the broker has to acknowledge a control command."""


class ControlPublisher:
    """Publishes control commands and waits for each acknowledgement.

    Blocking: call it from a thread (``asyncio.to_thread``) in async code. Thread-safe:
    librdkafka's producer and the serde both are. Creating one builds a confluent-kafka
    producer and a schema registry client; :meth:`close` releases them.

    Args:
        settings: Where Kafka and the schema registry are, and the topic prefix that
            names the control topic.
    """

    def __init__(self, settings: Settings) -> None:
        self._topic = Topology.from_settings(settings).control_topic
        self._serde = Serde(settings)
        self._producer = KafkaProducer(
            producer_config(settings, delivery_timeout=CONTROL_DELIVERY_TIMEOUT, linger_ms=0)
        )

    def cancel(self, job_id: str, reason: str | None) -> None:
        """Publishes a cancel command for ``job_id`` and waits until the broker has it.

        Args:
            job_id: The job to cancel.
            reason: Why, carried in the command.

        Raises:
            DeliveryError: The command could not be queued, or the broker did not
                acknowledge it within ``CONTROL_DELIVERY_TIMEOUT`` seconds.
        """
        record = {
            "command": "cancel",
            "job_id": job_id,
            "issued_at": dt.datetime.now(dt.UTC),
            "reason": reason,
        }
        value = self._serde.encode(CONTROL_COMMAND, self._topic, record)
        outcome: list[KafkaError | None] = []
        try:
            self._producer.produce(
                self._topic,
                key=job_id.encode(),
                value=value,
                on_delivery=lambda err, _msg: outcome.append(err),
            )
        except (KafkaException, BufferError) as exc:
            raise DeliveryError(
                f"could not queue the cancel command of job {job_id}: {exc}"
            ) from exc
        self._producer.flush(CONTROL_DELIVERY_TIMEOUT + EXPIRY_MARGIN)
        if not outcome:
            raise DeliveryError(
                f"the cancel command of job {job_id} was not acknowledged by {self._topic} "
                f"within {CONTROL_DELIVERY_TIMEOUT:g}s; is the broker reachable? (the cancel "
                "request is recorded; run cancel again to resend it)"
            )
        if outcome[0] is not None:
            raise DeliveryError(
                f"the cancel command of job {job_id} was not delivered to {self._topic}: "
                f"{outcome[0].str()} (the cancel request is recorded; run cancel again to "
                "resend it)"
            )

    def close(self) -> None:
        """Waits for anything still queued, then closes the registry client."""
        try:
            self._producer.flush(CONTROL_DELIVERY_TIMEOUT + EXPIRY_MARGIN)
        finally:
            self._producer.close()  # drops its broker connections now, not at collection
            self._serde.close()


__all__ = ["CONTROL_DELIVERY_TIMEOUT", "ControlPublisher"]
