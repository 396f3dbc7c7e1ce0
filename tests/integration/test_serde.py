"""The serde against the real ``conveyor registry serve``, as separate processes would use it."""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.errors import DeserializationError, SerializationError, UnknownSchemaError
from conveyor.schemas.contracts import (
    ALL_CONTRACTS,
    CONTROL_COMMAND,
    DLQ_RECORD,
    JOB_ENVELOPE,
    JOB_EVENT,
    Contract,
)
from conveyor.schemas.payload import PayloadCodec
from conveyor.schemas.serde import Serde
from conveyor.schemas.wire import schema_id
from conveyor.settings import Settings

AT = datetime.datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=datetime.UTC)
JOB_ID = uuid.UUID("0b6f4c57-1f0a-4c59-9d8e-0c7b6c1d2e3f")
ERRORS = [{"attempt": 1, "error_type": "E", "message": "m", "traceback": "", "at": AT}]

RECORDS: dict[str, dict[str, Any]] = {
    JOB_ENVELOPE.name: {
        "job_id": JOB_ID,
        "type": "email.send",
        "key": "k",
        "priority": "high",
        "payload": b"{}",
        "content_type": "application/json",
        "tenant_id": "acme",
        "batch_id": None,
        "dedupe_key": None,
        "attempt": 2,
        "max_attempts": 4,
        "submitted_at": AT,
        "not_before": AT,
        "duration": "long",
        "errors": ERRORS,
    },
    JOB_EVENT.name: {
        "kind": "JobProgress",
        "job_id": JOB_ID,
        "type": "email.send",
        "tenant_id": None,
        "priority": "normal",
        "attempt": 1,
        "at": AT,
        "result_json": None,
        "error_reason": None,
        "error_message": None,
        "error_history": ERRORS,
        "attempts": None,
        "dlq_id": 7,
        "failed_at": None,
        "next_attempt_at": None,
        "progress_pct": 12.5,
        "progress_message": "sending",
        "worker_id": "w-1",
    },
    DLQ_RECORD.name: {
        "job_id": None,
        "type": None,
        "key": None,
        "priority": None,
        "tenant_id": None,
        "batch_id": None,
        "dedupe_key": None,
        "payload": b"\xde\xad",
        "content_type": "application/octet-stream",
        "max_attempts": None,
        "duration": None,
        "submitted_at": None,
        "error_reason": "Deserialization",
        "attempts": 0,
        "error_history": ERRORS,
        "source_topic": "acme.jobs.low",
        "source_partition": 1,
        "source_offset": 99,
        "trace_id": None,
        "dead_at": AT,
    },
    CONTROL_COMMAND.name: {"command": "cancel", "job_id": JOB_ID, "issued_at": AT, "reason": None},
}


@pytest.fixture
def registry_settings(schema_registry_url: str) -> Settings:
    return Settings(
        schema_registry_url=schema_registry_url, topic_prefix=f"s{uuid.uuid4().hex[:10]}"
    )


@pytest.fixture
def serde(registry_settings: Settings) -> Iterator[Serde]:
    with Serde(registry_settings) as built:
        yield built


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.short_name)
def test_every_contract_round_trips_through_the_real_registry(
    serde: Serde, registry_settings: Settings, contract: Contract
) -> None:
    topic = f"{registry_settings.topic_prefix}.{contract.short_name}"
    record = RECORDS[contract.name]
    data = serde.encode(contract, topic, record)
    assert schema_id(data) == serde.register(contract, topic)
    assert serde.decode(contract, topic, data) == record
    # Once the (writer, reader) pair decoded, fastavro reads it straight after the header.
    assert serde.decode(contract, topic, data) == record
    assert serde.decode_any(data) == serde.decode_any(data) == record


def test_uuids_read_as_text_on_the_first_decode_and_the_fast_path_alike(
    serde: Serde, registry_settings: Settings
) -> None:
    """The worker's intake reads ids as text: the first decode of a schema id (the
    registry's deserializer) and every later one (fastavro after the header) agree."""
    topic = f"{registry_settings.topic_prefix}.jobs.normal"
    record = RECORDS[JOB_ENVELOPE.name]
    data = serde.encode(JOB_ENVELOPE, topic, record)
    as_text = {**record, "job_id": str(JOB_ID)}

    first = serde.decode(JOB_ENVELOPE, topic, data, text_uuids=True)
    again = serde.decode(JOB_ENVELOPE, topic, data, text_uuids=True)

    assert first == again == as_text
    assert type(again["job_id"]) is str
    assert serde.decode(JOB_ENVELOPE, topic, data) == record  # the default is unchanged


def test_a_corrupt_body_of_a_known_schema_is_still_a_deserialization_error(
    serde: Serde, registry_settings: Settings
) -> None:
    topic = f"{registry_settings.topic_prefix}.jobs.normal"
    data = serde.encode(JOB_ENVELOPE, topic, RECORDS[JOB_ENVELOPE.name])
    serde.decode(JOB_ENVELOPE, topic, data)

    with pytest.raises(DeserializationError, match="does not decode"):
        serde.decode(JOB_ENVELOPE, topic, data[:12])


def test_two_processes_agree_on_the_id_and_read_each_other(registry_settings: Settings) -> None:
    """Two Serde instances stand in for a producer process and a worker process."""
    topic = f"{registry_settings.topic_prefix}.jobs.normal"
    with Serde(registry_settings) as producer, Serde(registry_settings) as worker:
        data = producer.encode(JOB_ENVELOPE, topic, RECORDS[JOB_ENVELOPE.name])
        assert worker.register(JOB_ENVELOPE, topic) == producer.register(JOB_ENVELOPE, topic)
        assert data[:5] == b"\x00" + struct.pack(">I", worker.register(JOB_ENVELOPE, topic))
        assert worker.decode(JOB_ENVELOPE, topic, data) == RECORDS[JOB_ENVELOPE.name]


def test_register_all_returns_one_id_per_value_subject(
    serde: Serde, registry_settings: Settings
) -> None:
    prefix = registry_settings.topic_prefix
    ids = serde.register_all([(JOB_ENVELOPE, f"{prefix}.jobs.high"), (JOB_EVENT, f"{prefix}.ev")])
    assert sorted(ids) == [f"{prefix}.ev-value", f"{prefix}.jobs.high-value"]
    assert ids[f"{prefix}.ev-value"] == serde.register(JOB_EVENT, f"{prefix}.ev")


def test_unknown_schema_id_is_a_deserialization_error(serde: Serde) -> None:
    with pytest.raises(DeserializationError, match="schema id 2147483000 is unknown"):
        serde.decode(JOB_ENVELOPE, "any", b"\x00" + struct.pack(">I", 2147483000) + b"body")


def test_an_unknown_id_is_told_apart_and_a_read_id_needs_the_registry_no_more(
    serde: Serde, registry_settings: Settings
) -> None:
    """A 404 is an ``UnknownSchemaError`` (the worker waits on it: a follower may lag),
    and once an id was read, decoding it again makes no registry request."""
    unknown = b"\x00" + struct.pack(">I", 2147483000) + b"body"
    assert serde.needs_registry(unknown)
    with pytest.raises(UnknownSchemaError) as caught:
        serde.decode(JOB_ENVELOPE, "any", unknown)
    assert caught.value.schema_id == 2147483000
    assert serde.needs_registry(unknown), "an unknown id is asked again next time"
    assert not serde.needs_registry(b"\x01 not framed")  # fails locally, no request
    topic = f"{registry_settings.topic_prefix}.jobs.normal"
    with Serde(registry_settings) as producer:
        data = producer.encode(JOB_ENVELOPE, topic, RECORDS[JOB_ENVELOPE.name])
    assert serde.needs_registry(data)
    serde.decode(JOB_ENVELOPE, topic, data)
    assert not serde.needs_registry(data)


def test_payload_schemas_evolve_compatibly_and_refuse_breaking_changes(
    registry_settings: Settings,
) -> None:
    """BACKWARD: a field with a default may be added; a required field may not."""
    v1 = {
        "type": "record",
        "name": "Email",
        "fields": [{"name": "to", "type": "string"}],
    }
    v2 = {**v1, "fields": [*v1["fields"], {"name": "cc", "type": "string", "default": ""}]}
    v3 = {**v1, "fields": [*v1["fields"], {"name": "bcc", "type": "string"}]}
    prefix = registry_settings.topic_prefix
    with Serde(registry_settings) as old_side, Serde(registry_settings) as new_side:
        producer = PayloadCodec(old_side, prefix)
        producer.register_type("email.send", v1)
        data, content_type = producer.encode("email.send", {"to": "a@b"})
        worker = PayloadCodec(new_side, prefix)
        worker.register_type("email.send", v2)
        assert worker.register("email.send") != producer.register("email.send")
        assert worker.decode("email.send", data, content_type) == {"to": "a@b", "cc": ""}
        breaking = PayloadCodec(new_side, prefix)
        breaking.register_type("email.send", v3)
        with pytest.raises(SerializationError, match=f"refused .* {prefix}.payload.email.send"):
            breaking.encode("email.send", {"to": "a@b", "bcc": "c@d"})
