"""``RecordPublisher``: publish one conveyor record from asyncio code and wait for its ack.

Replay (``conveyor.dlq_replay``) publishes job envelopes with it, the DLQ sink
(``conveyor.consumer.dlq_sink``) its JobFailed events. Each record is encoded in
Confluent wire format and sent through :class:`~conveyor.producer.delivery.DeliveryCore`,
without batching (``linger.ms=0``): the caller awaits each ack before doing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from conveyor.producer.delivery import DeliveryCore
from conveyor.producer.jobs import Outgoing
from conveyor.schemas.contracts import Contract
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings

PUBLISH_TIMEOUT = 15.0
"""Seconds the broker has to acknowledge a replayed job or a JobFailed event."""


class RecordPublisher:
    """Publishes conveyor records in Confluent wire format and waits for each ack.

    An idempotent confluent-kafka producer (``acks=all``) through
    :class:`~conveyor.producer.delivery.DeliveryCore`. Replay publishes job envelopes
    with it, the DLQ sink its JobFailed events. Use it as ``async with``, or call
    :meth:`close`.

    Args:
        settings: Where Kafka and the schema registry are.
        serde: The encoder to use; one is built from ``settings`` (and closed with the
            publisher) when omitted.
        delivery_timeout: Seconds the broker has to acknowledge each record.
        fail_fast: Until a broker has answered, give up soon if none does (replay from
            the CLI); a long-running service (the DLQ sink) waits out the timeout instead.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        serde: Serde | None = None,
        delivery_timeout: float = PUBLISH_TIMEOUT,
        fail_fast: bool = False,
    ) -> None:
        self._owns_serde = serde is None
        self.serde = Serde(settings) if serde is None else serde
        self._core = DeliveryCore(
            settings, delivery_timeout=delivery_timeout, linger_ms=0, fail_fast=fail_fast
        )

    async def publish(
        self,
        contract: Contract,
        topic: str,
        record: Mapping[str, Any],
        *,
        key: bytes,
        job_id: str,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Encodes ``record`` for ``topic`` and returns once the broker acknowledged it.

        Raises:
            SerializationError: The record does not fit ``contract``.
            RegistryUnavailableError: The registry did not answer.
            DeliveryError: The broker did not acknowledge the record in time.
        """
        value = await asyncio.to_thread(self.serde.encode, contract, topic, record)
        message = Outgoing(job_id, topic, key, value, headers or [])
        futures = self._core.send([message])
        await asyncio.to_thread(self._core.wait, futures)

    async def close(self) -> None:
        """Flushes what is queued, stops the producer and, if built here, the serde."""
        try:
            await asyncio.to_thread(self._core.close)
        finally:
            if self._owns_serde:
                self.serde.close()

    async def __aenter__(self) -> RecordPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


__all__ = ["PUBLISH_TIMEOUT", "RecordPublisher"]
