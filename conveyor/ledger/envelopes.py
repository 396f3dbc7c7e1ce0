"""Cheap decoding of job envelopes into the ledger's ``queued`` rows.

The ledger reads every job message, so it decodes with fastavro's schemaless reader
straight after the 5-byte Confluent header, with the writer schema parsed once per
schema id (``Serde.decode`` goes through confluent-kafka's deserializer, which costs
more per record). When the writer schema is the contract itself, no resolution runs;
an older or newer writer is resolved into ``JOB_ENVELOPE``. Ids are read as the text on
the wire (``conveyor.schemas.uuidtext``), checked, and kept in their canonical form.

A record that cannot be a ``queued`` row (bad framing, a body that does not decode, a
job id or batch id that is not a UUID, an unknown priority, text Postgres refuses) raises
:class:`~conveyor.errors.DeserializationError`: the ledger skips it (the worker
dead-letters it). A registry that does not answer raises
:class:`~conveyor.errors.RegistryUnavailableError`, which is not the record's fault.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from typing import Any, NamedTuple

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError

from conveyor.consumer.job import canonical_id, is_uuid_text
from conveyor.errors import DeserializationError, RegistryUnavailableError
from conveyor.schemas.contracts import JOB_ENVELOPE, PRIORITIES
from conveyor.schemas.uuidtext import parsed_pair
from conveyor.schemas.wire import HEADER_SIZE, SCHEMA_NOT_FOUND, schema_id


class QueuedRow(NamedTuple):
    """What the ledger stores for one job message: the ``jobs`` columns of a queued job,
    the attempt of its ``queued`` transition, and where the message sits."""

    job_id: str
    type: str
    key: str
    tenant_id: str | None
    priority: str
    batch_id: str | None
    dedupe_key: str | None
    max_attempts: int | None
    submitted_at: dt.datetime
    attempt: int
    topic: str
    partition: int
    offset: int


class EnvelopeDecoder:
    """Decodes ``JobEnvelope`` values into :class:`QueuedRow`, one schema parse per id.

    Thread-safe. Args:
        client: The registry client that resolves schema ids (``Serde.client``).
    """

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        # Schema id -> (writer schema, reader schema or None when they are the same).
        self._schemas: dict[int, tuple[Any, Any]] = {}
        self._reader_json = json.loads(JOB_ENVELOPE.schema_str)

    def needs_registry(self, value: bytes | None) -> bool:
        """Whether decoding ``value`` may ask the registry: its schema id is well formed
        and not parsed here yet (then decode it off the event loop)."""
        try:
            return value is not None and schema_id(value) not in self._schemas
        except DeserializationError:
            return False

    def row(self, value: bytes | None, *, topic: str, partition: int, offset: int) -> QueuedRow:
        """The queued row of one job message.

        Raises:
            DeserializationError: The message cannot be a queued row (see the module).
            RegistryUnavailableError: The registry did not answer for a new schema id.
        """
        if value is None:  # a tombstone
            raise DeserializationError("message has no value bytes")
        writer_id = schema_id(value)
        if len(value) == HEADER_SIZE:
            raise DeserializationError("message has a header but no Avro body")
        writer, reader = self._schemas.get(writer_id) or self._load(writer_id)
        try:
            record = fastavro.schemaless_reader(io.BytesIO(value[HEADER_SIZE:]), writer, reader)
        except Exception as exc:  # fastavro raises many types for a corrupt body
            raise DeserializationError(
                f"Avro body does not decode with writer schema id {writer_id}: "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from exc
        return _row(record, topic=topic, partition=partition, offset=offset)

    def _load(self, writer_id: int) -> tuple[Any, Any]:
        with self._lock:
            found = self._schemas.get(writer_id)
            if found is not None:
                return found
            try:
                schema = self._client.get_schema(writer_id)
            except SchemaRegistryError as exc:
                if exc.error_code in SCHEMA_NOT_FOUND or exc.http_status_code == 404:
                    raise DeserializationError(
                        f"schema id {writer_id} is unknown to the registry"
                    ) from exc
                raise RegistryUnavailableError(
                    f"schema registry refused schema id {writer_id}: {exc}"
                ) from exc
            except Exception as exc:  # the client's transport errors (httpx or httpx2)
                raise RegistryUnavailableError(
                    f"schema registry did not answer for schema id {writer_id}: {exc}"
                ) from exc
            try:
                found = parsed_pair(
                    json.loads(schema.schema_str or ""), self._reader_json, text_uuids=True
                )
            except Exception as exc:
                raise DeserializationError(
                    f"schema id {writer_id} is not an Avro schema: {str(exc)[:200]}"
                ) from exc
            self._schemas[writer_id] = found
            return found


def _text(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise DeserializationError(f"{name} is not text Postgres can store")
    return value


def _uuid(value: Any, name: str) -> str | None:
    """The id in Postgres' text form of a UUID, as the worker stores it."""
    if value is None:
        return None
    text = str(value)
    if is_uuid_text(text):  # as conveyor's producer writes it
        return text
    text = canonical_id(text)
    if not is_uuid_text(text):
        raise DeserializationError(f"{name} {str(value)[:60]!r} is not a UUID")
    return text


def _row(record: Any, *, topic: str, partition: int, offset: int) -> QueuedRow:
    if not isinstance(record, dict):
        raise DeserializationError("decoded a non-record value")
    job_id = _uuid(record.get("job_id"), "job_id")
    job_type = _text(record, "type")
    priority = record.get("priority")
    submitted_at = record.get("submitted_at")
    if job_id is None or not job_type:
        raise DeserializationError("the envelope has no job id or type")
    if priority not in PRIORITIES:
        raise DeserializationError(f"unknown priority {str(priority)[:30]!r}")
    if not isinstance(submitted_at, dt.datetime):
        raise DeserializationError("submitted_at is not a time")
    max_attempts = record.get("max_attempts")
    if max_attempts is not None and max_attempts < 1:
        max_attempts = None  # the worker applies the handler's policy instead
    attempt = record.get("attempt", 1)
    return QueuedRow(
        job_id=job_id,
        type=job_type,
        # The worker stores a job without a key under its job id (JobMessage.from_envelope).
        key=_text(record, "key") or job_id,
        tenant_id=_text(record, "tenant_id"),
        priority=priority,
        batch_id=_uuid(record.get("batch_id"), "batch_id"),
        dedupe_key=_text(record, "dedupe_key"),
        max_attempts=max_attempts,
        submitted_at=submitted_at,
        attempt=attempt if isinstance(attempt, int) and attempt >= 0 else 1,
        topic=topic,
        partition=partition,
        offset=offset,
    )


__all__ = ["EnvelopeDecoder", "QueuedRow"]
