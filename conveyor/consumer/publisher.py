"""Where failed jobs go: the retry topic that fits their backoff, or the DLQ.

Each publish is a PRODUCER span (a child of the job's run) whose context replaces the
trace headers of the message, so the relay hop and the DLQ sink continue the trace.
The worker commits a failed job's offset only after its retry or DLQ message is
acknowledged (``acks=all``, idempotent producer), so a failure is never lost between
the two topics. Encoding runs in a thread, since it may register a schema with the
registry (an HTTP request) the first time a topic is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.consumer.job import JobMessage
from conveyor.observability import tracing
from conveyor.producer.delivery import DeliveryCore
from conveyor.producer.jobs import HEADER_JOB_ID, HEADER_JOB_TYPE, HEADER_PRIORITY, Outgoing
from conveyor.schemas.contracts import CONTENT_TYPE_RAW, DLQ_RECORD, JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology

PUBLISH_TIMEOUT = 30.0
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id(headers: Mapping[str, bytes]) -> str | None:
    """The W3C trace id in a message's ``traceparent`` header, if any."""
    raw = headers.get("traceparent")
    match = _TRACEPARENT.match(raw.decode(errors="replace")) if raw else None
    return match.group(1) if match else None


def envelope_of(job: JobMessage, **changes: Any) -> dict[str, Any]:
    """The JobEnvelope record of a job, with some fields changed."""
    envelope: dict[str, Any] = {
        "job_id": job.job_id,
        "type": job.type,
        "key": job.key,
        "priority": job.priority,
        "payload": job.payload,
        "content_type": job.content_type,
        "tenant_id": job.tenant_id,
        "batch_id": job.batch_id,
        "dedupe_key": job.dedupe_key,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "submitted_at": job.submitted_at,
        "not_before": job.not_before,
        "duration": job.duration,
        "errors": list(job.errors),
    }
    envelope.update(changes)
    return envelope


class FailurePublisher:
    """Publishes retries and dead letters, and waits for the broker's acknowledgement.

    Args:
        settings: Broker settings.
        serde: Encodes envelopes and DLQ records.
        core: Where messages are sent; a Kafka producer built from ``settings`` when
            omitted (``conveyor.testing`` passes an in-memory log).
    """

    def __init__(
        self, settings: Settings, *, serde: Serde, core: DeliveryCore | None = None
    ) -> None:
        self._topology = Topology.from_settings(settings)
        self._serde = serde
        self._core = core or DeliveryCore(settings, delivery_timeout=PUBLISH_TIMEOUT)

    @property
    def problem(self) -> str | None:
        """Why this publisher can send nothing more (a fatal producer error), or None.

        A liveness check: every retry and DLQ publish would fail from now on, so the
        worker stops fetching and reports unhealthy until it is restarted.
        """
        fatal = self._core.fatal_error
        return None if fatal is None else str(fatal)

    async def retry(
        self, job: JobMessage, errors: Sequence[Mapping[str, Any]], delay: float
    ) -> dt.datetime:
        """Sends the job's next attempt to the retry topic whose delay fits ``delay``.

        Returns:
            The ``not_before`` time of the next attempt.
        """
        not_before = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        topic = self._topology.retry_topic_for(delay)
        envelope = envelope_of(
            job, attempt=job.attempt + 1, not_before=not_before, errors=list(errors)
        )
        # In a thread: the first encode for a topic registers its schema (an HTTP request
        # of up to the registry timeout), which must not stall the worker's event loop.
        value = await asyncio.to_thread(self._serde.encode, JOB_ENVELOPE, topic, envelope)
        attributes = tracing.job_attributes(
            job_id=job.job_id, job_type=job.type, priority=job.priority, attempt=job.attempt + 1
        )
        with tracing.send_span(topic, attributes):
            headers = tracing.with_current_context(self._headers(job))
            await self._send(Outgoing(job.job_id, topic, job.key.encode(), value, headers))
        return not_before

    async def dead(self, job: JobMessage, errors: Sequence[Mapping[str, Any]], reason: str) -> None:
        """Sends the job, with the error of every attempt, to the DLQ topic."""
        record = {
            "job_id": job.job_id,
            "type": job.type,
            "key": job.key,
            "priority": job.priority,
            "tenant_id": job.tenant_id,
            "batch_id": job.batch_id,
            "dedupe_key": job.dedupe_key,
            "payload": job.payload,
            "content_type": job.content_type,
            "max_attempts": job.max_attempts,
            "duration": job.duration,
            "submitted_at": job.submitted_at,
            "error_reason": reason,
            "attempts": job.attempt,
            "error_history": list(errors),
            "source_topic": job.topic,
            "source_partition": job.partition,
            "source_offset": job.offset,
            "trace_id": trace_id(job.headers),
            "dead_at": _now_ms(),
        }
        attributes = tracing.job_attributes(
            job_id=job.job_id, job_type=job.type, priority=job.priority, attempt=job.attempt
        )
        await self._dead_record(
            job.job_id,
            job.key.encode(),
            record,
            self._headers(job),
            {**attributes, "conveyor.dlq.reason": reason},
        )

    async def dead_raw(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes],
        reason: str,
        error: Mapping[str, Any],
    ) -> None:
        """Sends a message that is not a decodable job, as raw bytes, to the DLQ topic."""
        record = {
            "job_id": None,
            "payload": value,
            "content_type": CONTENT_TYPE_RAW,
            "error_reason": reason,
            "attempts": 1,
            "error_history": [dict(error)],
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "trace_id": trace_id(headers),
            "dead_at": _now_ms(),
        }
        label = f"{topic}[{partition}]@{offset}"
        attributes = {"conveyor.dlq.reason": reason, "conveyor.dlq.source": label}
        await self._dead_record(
            label, key or label.encode(), record, list(headers.items()), attributes
        )

    async def _dead_record(
        self,
        label: str,
        key: bytes,
        record: Mapping[str, Any],
        headers: Sequence[tuple[str, str | bytes | None]],
        attributes: Mapping[str, Any],
    ) -> None:
        topic = self._topology.dlq_topic
        value = await asyncio.to_thread(self._serde.encode, DLQ_RECORD, topic, record)
        with tracing.send_span(topic, attributes):
            traced = tracing.with_current_context(headers)
            await self._send(Outgoing(label, topic, key, value, traced))

    @staticmethod
    def _headers(job: JobMessage) -> list[tuple[str, str | bytes | None]]:
        headers: dict[str, bytes] = dict(job.headers)
        headers[HEADER_JOB_ID] = job.job_id.encode()
        headers[HEADER_JOB_TYPE] = job.type.encode()
        headers[HEADER_PRIORITY] = job.priority.encode()
        return list(headers.items())

    async def _send(self, message: Outgoing) -> None:
        [future] = self._core.send([message])
        await asyncio.wrap_future(future)

    async def close(self) -> None:
        """Flushes and closes the producer."""
        await asyncio.to_thread(self._core.close)


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
