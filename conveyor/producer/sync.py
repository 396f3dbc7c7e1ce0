"""``Producer``: submit jobs from synchronous code (Django, Flask, scripts)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self, overload

from conveyor.errors import Problem
from conveyor.observability import tracing
from conveyor.observability.metrics import SUBMITTED
from conveyor.producer.delivery import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_LINGER_MS,
    DeliveryCore,
    DeliveryErrorCallback,
    DeliveryStats,
)
from conveyor.producer.jobs import MessageBuilder, Options, as_items
from conveyor.schemas.payload import PayloadCodec
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology


class ProducerBase:
    """What the sync and async producers share: validation, encoding and delivery.

    Args:
        settings: Broker, registry and topic settings.
        schemas: Payload schemas by job type (an Avro dict, a ``PayloadSchema`` or a
            dataclass); types without one carry JSON.
        delivery_timeout: Seconds a message may take to be acknowledged.
        linger_ms: How long the client may wait to fill a batch. 0 by default: messages
            that queue while a request is in flight are still batched; a larger value
            trades each job's latency for fewer produce requests.
        on_delivery_error: Receives ``(job_id, error)`` for each failed delivery instead
            of ``flush``/``close`` raising it.
        serde: The envelope serde; built from ``settings`` when omitted.
        core: Where messages are sent; a Kafka producer built from ``settings`` when
            omitted (``conveyor.testing`` passes an in-memory log).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        schemas: Mapping[str, Any] | None = None,
        delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
        linger_ms: int = DEFAULT_LINGER_MS,
        on_delivery_error: DeliveryErrorCallback | None = None,
        serde: Serde | None = None,
        core: DeliveryCore | None = None,
    ) -> None:
        self.settings = settings
        self._owns_serde = serde is None
        self._serde = serde or Serde(settings)
        self._codec = PayloadCodec(self._serde, settings.topic_prefix)
        for job_type, schema in (schemas or {}).items():
            self._codec.register_type(job_type, schema)
        self._builder = MessageBuilder(
            topology=Topology.from_settings(settings),
            serde=self._serde,
            codec=self._codec,
            max_payload_bytes=settings.max_payload_bytes,
        )
        self._core = core or DeliveryCore(
            settings,
            delivery_timeout=delivery_timeout,
            linger_ms=linger_ms,
            on_delivery_error=on_delivery_error,
            fail_fast=True,
        )

    def _close(self, timeout: float | None) -> None:
        try:
            self._core.close(timeout)
        finally:
            if self._owns_serde:
                self._serde.close()

    @property
    def stats(self) -> DeliveryStats:
        """Counts of submitted, delivered and failed messages."""
        return self._core.stats

    def _build_and_send(
        self, job_type: str, items: list[Any], options: Options, *, batch: bool
    ) -> tuple[list[str], list[concurrent.futures.Future[None]]]:
        """Validates, encodes and queues a submission inside its PRODUCER span.

        The span is current while the messages are built, so their trace headers carry
        its context, and the run of each job becomes its child.
        """
        with tracing.send_span(None, {"job.type": job_type}) as span:
            messages = self._builder.build(job_type, items, options, batch=batch)
            topics = {m.topic for m in messages}
            if len(topics) == 1:
                [topic] = topics
                span.update_name(f"send {topic}")
                span.set_attribute("messaging.destination.name", topic)
            if batch:
                span.set_attribute("messaging.batch.message_count", len(messages))
            else:
                span.set_attributes(
                    tracing.job_attributes(
                        job_id=messages[0].job_id,
                        job_type=job_type,
                        priority=messages[0].priority,
                        attempt=1,
                    )
                )
            futures = self._core.send(messages)
        for message in messages:
            SUBMITTED.labels(job_type, message.priority or "").inc()
        return [m.job_id for m in messages], futures

    def register_schema(self, job_type: str, schema: Any) -> None:
        """Declares the Avro schema of a job type's payload (validated before sending)."""
        self._codec.register_type(job_type, schema)

    def validate(self, job_type: str, payloads: Any, **options: Any) -> list[Problem]:
        """Returns every problem of a submission without sending anything.

        Args:
            job_type: The job type.
            payloads: One payload, or a list of payloads and ``Job`` items.
            **options: The keyword options ``submit`` takes.
        """
        items, _batch = as_items(payloads)
        problems, _encoded = self._builder.problems(job_type, items, Options(**options))
        return problems


class Producer(ProducerBase):
    """Submits jobs from synchronous code; a context manager that flushes on exit.

    ``submit`` is fire-and-forget by default: it returns the job id once the message is
    queued, and a failed delivery is raised by the next ``flush()``/``close()`` (or given
    to ``on_delivery_error``). With ``wait=True`` it returns only after the broker
    acknowledged, and raises ``DeliveryError`` if it did not within the delivery timeout.
    """

    @overload
    def submit(
        self,
        job_type: str,
        payload_or_list: list[Any],
        *,
        key: str | None = None,
        priority: str = "normal",
        dedupe_key: str | None = None,
        tenant_id: str | None = None,
        max_attempts: int | None = None,
        delay: Any = None,
        run_at: Any = None,
        duration: str = "short",
        wait: bool = False,
    ) -> list[str]: ...
    @overload
    def submit(
        self,
        job_type: str,
        payload_or_list: Any,
        *,
        key: str | None = None,
        priority: str = "normal",
        dedupe_key: str | None = None,
        tenant_id: str | None = None,
        max_attempts: int | None = None,
        delay: Any = None,
        run_at: Any = None,
        duration: str = "short",
        wait: bool = False,
    ) -> str: ...

    def submit(
        self,
        job_type: str,
        payload_or_list: Any,
        *,
        key: str | None = None,
        priority: str = "normal",
        dedupe_key: str | None = None,
        tenant_id: str | None = None,
        max_attempts: int | None = None,
        delay: Any = None,
        run_at: Any = None,
        duration: str = "short",
        wait: bool = False,
    ) -> str | list[str]:
        """Submits one job, or a batch (a list) sharing one ``batch_id``.

        Args:
            job_type: The registered handler's type, like ``"email.send"``.
            payload_or_list: The payload, or a list of payloads and ``Job`` items.
            key: Entity key; jobs of one key run one at a time, in order. Defaults to the job id.
            priority: ``critical``, ``high``, ``normal`` or ``low``; picks the topic.
            dedupe_key: Makes the id deterministic, so a repeated submit is the same job and
                runs once.
            tenant_id: The tenant that owns the job.
            max_attempts: Overrides the handler's attempt limit.
            delay: Seconds (or a timedelta) before the job may start, 0 to years; a
                delayed job is ``scheduled`` until the scheduler releases it.
            run_at: A timezone-aware datetime at which the job may start (instead of
                ``delay``); a naive one, or one in the past, is a ``ValidationError``.
            duration: ``"long"`` for jobs that heartbeat their lease while running.
            wait: Return only after the broker acknowledged every message.

        Returns:
            The job id, or the ids of a list in order.

        Raises:
            ValidationError: Something is invalid; nothing was sent.
            DeliveryError: With ``wait=True``, the broker did not acknowledge in time.
        """
        items, batch = as_items(payload_or_list)
        options = Options(
            key, priority, dedupe_key, tenant_id, max_attempts, delay, duration, run_at
        )
        ids, futures = self._build_and_send(job_type, items, options, batch=batch)
        if wait:
            self._core.wait(futures)
        return ids if batch else ids[0]

    def flush(self, timeout: float | None = None) -> None:
        """Waits for every queued message; raises ``DeliveryError`` for failed ones."""
        self._core.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flushes and releases the clients; raises ``DeliveryError`` for failed messages."""
        self._close(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
