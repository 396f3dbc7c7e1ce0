"""The producer of the retry relay and the scheduler: republishes records and reports
each ack as an asyncio future.

A confluent-kafka producer (idempotent, ``acks=all``) plus a thread that polls it. Each
delivery report arrives on that thread and is handed to the event loop with
``call_soon_threadsafe``, which resolves the future :meth:`Republisher.send` returned.

A *fatal* librdkafka error (idempotence broken, reported through ``error_cb`` or a
delivery report with ``err.fatal()``) makes the republisher unusable, as it does the job
producer's ``DeliveryCore`` (the detection is :mod:`conveyor.producer.fatal`): what is
queued is purged, every pending and later future fails with
:class:`~conveyor.errors.ProducerFatalError`, and :attr:`Republisher.fatal_error` says
why. Retrying such a republish can never succeed, so its users (the retry relay, the
scheduler's dispatcher and intake) end their run on it instead. Any other failure is a
plain :class:`~conveyor.errors.DeliveryError`, which they retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as KafkaProducer

from conveyor.errors import ConfigurationError, DeliveryError, ProducerFatalError
from conveyor.observability import librdkafka
from conveyor.producer.delivery import producer_config
from conveyor.producer.fatal import FatalWatch
from conveyor.settings import Settings

_POLL_INTERVAL = 0.1
#: How a republisher's errors name it unless its owner names it.
DEFAULT_NAME = "the republishing producer"


class Republisher:
    """Republishes records as they are and resolves an asyncio future per ack.

    :meth:`send` must be called from the event loop that awaits its futures. Call
    :meth:`close` (it blocks, so from a worker thread) when done.

    Args:
        settings: Connection and security settings.
        delivery_timeout: Seconds a record may take to be acknowledged before it fails;
            also how long :meth:`close` waits for records in flight.
        linger_ms: How long librdkafka may wait to fill a batch.
        name: How a fatal error names this producer ("the retry relay's producer").

    Raises:
        ConfigurationError: The producer configuration was refused.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        delivery_timeout: float,
        linger_ms: int,
        name: str = DEFAULT_NAME,
    ) -> None:
        self._delivery_timeout = delivery_timeout
        quiet, errors = librdkafka.client_config()
        self._watch = FatalWatch(
            errors,
            client=f"{name} for {settings.kafka_bootstrap}",
            remedy="restart the process (a worker reports unhealthy on /healthz)",
        )
        config = {
            **producer_config(settings, delivery_timeout=delivery_timeout, linger_ms=linger_ms),
            **quiet,
            "error_cb": self._watch,
        }
        try:
            self._producer = KafkaProducer(config)
        except KafkaException as exc:
            raise ConfigurationError("kafka", f"cannot create {name}: {exc}") from exc
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._poll, name="conveyor-republish-poll", daemon=True
        )
        self._poller.start()

    @property
    def fatal_error(self) -> ProducerFatalError | None:
        """The fatal error that made this producer unusable, or None while it works."""
        return self._watch.fatal

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
            :class:`~conveyor.errors.DeliveryError` if it could not be queued or delivered:
            :class:`~conveyor.errors.ProducerFatalError` once the producer is unusable.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._watch.fatal is not None:
            future.set_exception(self._watch.fatal)
            return future
        try:
            self._producer.produce(
                topic,
                value=value,
                key=key,
                headers=headers,
                on_delivery=self._report(loop, future, topic),
            )
        except KafkaException as exc:
            fatal = self._watch.refused(exc)
            future.set_exception(
                fatal or DeliveryError(f"could not queue a record for {topic}: {exc}")
            )
        except BufferError as exc:
            future.set_exception(DeliveryError(f"could not queue a record for {topic}: {exc}"))
        return future

    def _report(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], topic: str
    ) -> Callable[[KafkaError | None, Message], None]:
        """The delivery report of one record: resolves its future on the event loop."""

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # Runs on the poll thread; the future belongs to the event loop.
            error = None if err is None else self._delivery_error(err, topic)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, future, error)

        return on_delivery

    def _delivery_error(self, err: KafkaError, topic: str) -> DeliveryError:
        """The error a failed delivery report stands for."""
        # Fatal, or purged because the producer is unusable.
        return self._watch.escalate(err) or DeliveryError(
            f"record not delivered to {topic}: {err.str()}"
        )

    def close(self) -> None:
        """Flushes what is in flight, then stops the poll thread (blocking)."""
        # Everything counted as republished was acknowledged; the flush only ends stray sends.
        # A broken producer delivers nothing more: don't wait for it.
        self._producer.flush(0 if self._watch.fatal is not None else self._delivery_timeout)
        self._closed.set()
        self._poller.join()
        if len(self._producer):
            self._producer.purge()
            self._producer.poll(0)
        self._producer.close()  # drops its broker connections now, not at collection

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(_POLL_INTERVAL)
            self._watch.purge_once_broken(self._producer)


def _resolve(future: asyncio.Future[None], error: DeliveryError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


__all__ = ["Republisher"]
