"""The retry relay's producer: republishes records and reports each ack as an asyncio future.

A confluent-kafka producer (idempotent, ``acks=all``) plus a thread that polls it. Each
delivery report arrives on that thread and is handed to the event loop with
``call_soon_threadsafe``, which resolves the future :meth:`Republisher.send` returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as KafkaProducer

from conveyor.errors import ConfigurationError, DeliveryError
from conveyor.producer.delivery import producer_config
from conveyor.settings import Settings

_POLL_INTERVAL = 0.1


class Republisher:
    """Republishes records as they are and resolves an asyncio future per ack.

    :meth:`send` must be called from the event loop that awaits its futures. Call
    :meth:`close` (it blocks, so from a worker thread) when done.

    Args:
        settings: Connection and security settings.
        delivery_timeout: Seconds a record may take to be acknowledged before it fails;
            also how long :meth:`close` waits for records in flight.
        linger_ms: How long librdkafka may wait to fill a batch.

    Raises:
        ConfigurationError: The producer configuration was refused.
    """

    def __init__(self, settings: Settings, *, delivery_timeout: float, linger_ms: int) -> None:
        self._delivery_timeout = delivery_timeout
        config = producer_config(settings, delivery_timeout=delivery_timeout, linger_ms=linger_ms)
        try:
            self._producer = KafkaProducer(config)
        except KafkaException as exc:
            raise ConfigurationError("kafka", f"cannot create the relay's producer: {exc}") from exc
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="conveyor-relay-poll", daemon=True)
        self._poller.start()

    def send(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, str | bytes | None]],
    ) -> asyncio.Future[None]:
        """Queues one record for ``topic``.

        Args:
            topic: Where the record goes.
            value: The record's value bytes, sent unchanged.
            key: The record's key bytes, sent unchanged.
            headers: The record's headers, sent unchanged.

        Returns:
            A future that resolves once the broker acknowledged the record, or fails with
            :class:`~conveyor.errors.DeliveryError` if it could not be queued or delivered.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # Runs on the poll thread; the future belongs to the event loop.
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, future, err, topic)

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=headers, on_delivery=on_delivery
            )
        except (BufferError, KafkaException) as exc:
            future.set_exception(DeliveryError(f"could not queue a retry for {topic}: {exc}"))
        return future

    def close(self) -> None:
        """Flushes what is in flight, then stops the poll thread (blocking)."""
        # Everything counted as republished was acknowledged; the flush only ends stray sends.
        self._producer.flush(self._delivery_timeout)
        self._closed.set()
        self._poller.join()
        self._producer.close()  # drops its broker connections now, not at collection

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(_POLL_INTERVAL)


def _resolve(future: asyncio.Future[None], err: KafkaError | None, topic: str) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(DeliveryError(f"retry not delivered to {topic}: {err.str()}"))


__all__ = ["Republisher"]
