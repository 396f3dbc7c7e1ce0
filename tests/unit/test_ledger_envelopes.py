"""The ledger's envelope decoder, against a mock registry: the rows it builds, and the
records it refuses (which the ledger skips rather than stopping on)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from conveyor.errors import DeserializationError
from conveyor.ledger.envelopes import EnvelopeDecoder, QueuedRow
from conveyor.ledger.rows import arguments, distinct, inserted_count
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings

TOPIC = "t.jobs.normal"
SUBMITTED = dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.UTC)
JOB_ID = "2f1f7f8e-4c59-4c4e-9d0f-2b8a9a0c1d11"


@pytest.fixture
def serde() -> Iterator[Serde]:
    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    with Serde(Settings(), client=client) as built:
        yield built


def envelope(**changes: Any) -> dict[str, Any]:
    return {
        "job_id": JOB_ID,
        "type": "email.send",
        "key": "user-1",
        "priority": "high",
        "payload": b"{}",
        "tenant_id": "acme",
        "batch_id": "7d3f4b1e-9a41-4bde-8f6e-0a1b2c3d4e5f",
        "dedupe_key": "d-1",
        "attempt": 1,
        "max_attempts": 3,
        "submitted_at": SUBMITTED,
        **changes,
    }


def decode(serde: Serde, value: bytes | None) -> QueuedRow:
    return EnvelopeDecoder(serde.client).row(value, topic=TOPIC, partition=1, offset=42)


def test_an_envelope_becomes_the_queued_row_the_worker_would_write(serde: Serde) -> None:
    row = decode(serde, serde.encode(JOB_ENVELOPE, TOPIC, envelope()))
    assert row == QueuedRow(
        job_id=JOB_ID,
        type="email.send",
        key="user-1",
        tenant_id="acme",
        priority="high",
        batch_id="7d3f4b1e-9a41-4bde-8f6e-0a1b2c3d4e5f",
        dedupe_key="d-1",
        max_attempts=3,
        submitted_at=SUBMITTED,
        attempt=1,
        topic=TOPIC,
        partition=1,
        offset=42,
    )


def test_a_job_without_a_key_is_stored_under_its_id_as_the_worker_does(serde: Serde) -> None:
    row = decode(serde, serde.encode(JOB_ENVELOPE, TOPIC, envelope(key=None, batch_id=None)))
    assert (row.key, row.batch_id) == (JOB_ID, None)


def test_ids_are_kept_as_text_in_the_form_the_worker_stores(serde: Serde) -> None:
    """fastavro reads the uuid field as text; another writer's spelling of the same
    UUID (upper case) is stored in Postgres' form, as the worker's canonical_id makes it."""
    upper = JOB_ID.upper()
    value = serde.encode(JOB_ENVELOPE, TOPIC, envelope(job_id=upper, batch_id=upper))
    row = decode(serde, value)
    assert (row.job_id, row.batch_id, row.key) == (JOB_ID, JOB_ID, "user-1")
    assert type(row.job_id) is str


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no value bytes"),
        (b"\x00\x00", "shorter than the 5-byte"),
        (b"\x01\x00\x00\x00\x01abc", "wrong magic byte"),
        (b"\x00\x00\x00\x00\x01", "no Avro body"),
        (b"\x00\x7f\xff\xff\xf0abc", "unknown to the registry"),
    ],
)
def test_bad_framing_is_refused_with_a_reason(
    serde: Serde, value: bytes | None, reason: str
) -> None:
    with pytest.raises(DeserializationError, match=reason):
        decode(serde, value)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"batch_id": "not-a-uuid"}, "batch_id 'not-a-uuid' is not a UUID"),
        ({"tenant_id": "a\x00b"}, "tenant_id is not text"),
        ({"type": ""}, "no job id or type"),
    ],
)
def test_an_envelope_postgres_would_refuse_is_refused_here(
    serde: Serde, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(DeserializationError, match=reason):
        decode(serde, serde.encode(JOB_ENVELOPE, TOPIC, envelope(**changes)))


def test_a_corrupt_body_is_refused(serde: Serde) -> None:
    good = serde.encode(JOB_ENVELOPE, TOPIC, envelope())
    with pytest.raises(DeserializationError, match="does not decode"):
        decode(serde, good[:12])


def test_a_batch_keeps_the_first_read_of_each_job_and_makes_one_array_per_column(
    serde: Serde,
) -> None:
    decoder = EnvelopeDecoder(serde.client)
    value = serde.encode(JOB_ENVELOPE, TOPIC, envelope())
    rows = [decoder.row(value, topic=TOPIC, partition=0, offset=o) for o in (5, 9)]
    unique = distinct(rows)
    assert [r.offset for r in unique] == [5]
    columns = arguments(unique)
    assert len(columns) == 13
    assert columns[-1] == [5]
    assert arguments([]) == [[]] * 13
    assert inserted_count("INSERT 0 17") == 17
