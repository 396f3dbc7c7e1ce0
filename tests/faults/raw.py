"""Messages written past the producer SDK: envelopes built by hand, and arbitrary bytes.

The fault scenarios use them for what the SDK would refuse to send: envelopes in a newer
schema version, bytes that are not an envelope at all, payloads a handler cannot take.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from confluent_kafka import Producer as KafkaProducer

from conveyor import Settings
from conveyor.producer.jobs import HEADER_JOB_ID, HEADER_JOB_TYPE, HEADER_PRIORITY


def envelope(job_type: str, payload: bytes, **fields: Any) -> dict[str, Any]:
    """A ``JobEnvelope`` record of a first attempt on ``normal``; ``fields`` override."""
    record: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "type": job_type,
        "key": None,
        "priority": "normal",
        "payload": payload,
        "content_type": "application/json",
        "tenant_id": None,
        "batch_id": None,
        "dedupe_key": None,
        "attempt": 1,
        "max_attempts": None,
        "submitted_at": dt.datetime.now(dt.UTC),
        "not_before": None,
        "duration": "short",
        "errors": [],
    }
    record.update(fields)
    return record


Headers = list[tuple[str, str | bytes | None]]


def job_headers(record: dict[str, Any]) -> Headers:
    """The headers the SDK puts on a job message."""
    return [
        (HEADER_JOB_ID, str(record["job_id"]).encode()),
        (HEADER_JOB_TYPE, str(record["type"]).encode()),
        (HEADER_PRIORITY, str(record["priority"]).encode()),
    ]


def produce(
    settings: Settings,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None, Headers]],
) -> list[tuple[int, int]]:
    """Writes ``(key, value, headers)`` messages to ``topic`` (acks=all, in order); returns
    each one's ``(partition, offset)``.

    Raises:
        AssertionError: A message was not acknowledged.
    """
    producer = KafkaProducer(
        {
            **settings.kafka_config(),
            "acks": "all",
            "enable.idempotence": True,
            "log_level": 0,
            # Each keyless message to a random partition, not runs of them to one: the
            # fuzz scenarios' bad messages (keyless) spread over the partitions.
            "sticky.partitioning.linger.ms": 0,
        }
    )
    placed: list[tuple[int, int] | None] = [None] * len(messages)
    failures: list[str] = []

    def report(index: int) -> Any:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                placed[index] = (msg.partition(), msg.offset())

        return done

    for index, (key, value, headers) in enumerate(messages):
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=report(index)
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
    assert producer.flush(120) == 0, "messages still queued after 120 s"
    assert not failures, failures[:3]
    return [p for p in placed if p is not None]
