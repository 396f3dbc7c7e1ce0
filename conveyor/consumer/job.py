"""The job as the worker sees it: a decoded envelope plus where it was read from."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

FINAL_STATES = ("complete", "failed", "cancelled")
STATES = ("queued", "processing", *FINAL_STATES)

#: A UUID in the form Postgres prints (``job_id::text``) and the producer sends.
_IN_TEXT_FORM = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch


def canonical_id(value: str) -> str:
    """``value`` in Postgres' text form of a UUID; unchanged if it is not a UUID.

    An id read back from Postgres is in that form, so the worker compares ids in it. A
    match of the form costs 0.2 µs where parsing a UUID and printing it costs 1.2 µs,
    and ids from conveyor's producer are always in it.
    """
    if _IN_TEXT_FORM(value) is not None:
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value  # JobMessage.unstorable() names it


def is_uuid_text(value: str) -> bool:
    """Whether ``value`` is a UUID in Postgres' text form (what :func:`canonical_id`
    makes of any UUID)."""
    return _IN_TEXT_FORM(value) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class JobMessage:
    """One job read from a job topic.

    Args:
        job_id: The job's id (a UUID string).
        type: The job type, naming its handler.
        key: The entity key; jobs of one key run one at a time, in offset order.
        priority: ``critical``, ``high``, ``normal`` or ``low``.
        payload: The encoded payload.
        content_type: How ``payload`` is encoded (JSON or Avro).
        tenant_id: The owning tenant, if any.
        batch_id: The batch the job was submitted in, if any.
        dedupe_key: The submitter's dedupe key, if any.
        attempt: This attempt's number, from 1.
        max_attempts: The submitter's attempt limit, overriding the handler's.
        submitted_at: When the producer built the job.
        not_before: The job must not start before this time.
        duration: ``short`` or ``long`` (long jobs heartbeat their lease).
        errors: The errors of earlier attempts, oldest first.
        topic: The topic it was read from.
        partition: The partition it was read from.
        offset: Its offset in that partition.
        headers: The Kafka headers (trace context among them).
    """

    job_id: str
    type: str
    key: str
    priority: str
    payload: bytes
    content_type: str
    tenant_id: str | None
    batch_id: str | None
    dedupe_key: str | None
    attempt: int
    max_attempts: int | None
    submitted_at: dt.datetime
    not_before: dt.datetime | None
    duration: str
    errors: Sequence[Mapping[str, Any]]
    topic: str
    partition: int
    offset: int
    headers: Mapping[str, bytes]

    @classmethod
    def from_envelope(
        cls,
        envelope: Mapping[str, Any],
        *,
        topic: str,
        partition: int,
        offset: int,
        headers: Mapping[str, bytes],
    ) -> JobMessage:
        """Builds a job from a decoded ``JobEnvelope`` record and its Kafka coordinates;
        its ids in canonical form (:func:`canonical_id`)."""
        job_id = canonical_id(str(envelope["job_id"]))
        batch_id = envelope.get("batch_id")
        return cls(
            job_id=job_id,
            type=envelope["type"],
            key=envelope.get("key") or job_id,
            priority=envelope["priority"],
            payload=envelope["payload"],
            content_type=envelope["content_type"],
            tenant_id=envelope.get("tenant_id"),
            batch_id=None if batch_id is None else canonical_id(str(batch_id)),
            dedupe_key=envelope.get("dedupe_key"),
            attempt=envelope.get("attempt", 1),
            max_attempts=envelope.get("max_attempts"),
            submitted_at=envelope["submitted_at"],
            not_before=envelope.get("not_before"),
            duration=envelope.get("duration", "short"),
            errors=list(envelope.get("errors") or []),
            topic=topic,
            partition=partition,
            offset=offset,
            headers=headers,
        )

    def log_fields(self) -> dict[str, Any]:
        """The fields every log record made while this job runs carries."""
        fields: dict[str, Any] = {
            "job_id": self.job_id,
            "job_type": self.type,
            "priority": self.priority,
            "attempt": self.attempt,
        }
        if self.tenant_id is not None:
            fields["tenant_id"] = self.tenant_id
        return fields

    def unstorable(self) -> str | None:
        """Why Postgres would refuse this job's row (a NUL in a text field, an id that is
        not a UUID), or None. Only a hand-made or corrupt message gets here: the producer
        refuses such jobs at submit."""
        for name in ("type", "key", "tenant_id", "dedupe_key"):
            value = getattr(self, name)
            if value is not None and "\x00" in value:
                return f"{name} holds a NUL character, which Postgres cannot store"
        for name in ("job_id", "batch_id"):
            value = getattr(self, name)
            if value is not None and not is_uuid_text(canonical_id(value)):
                return f"{name} {value[:60]!r} is not a UUID"
        return None
