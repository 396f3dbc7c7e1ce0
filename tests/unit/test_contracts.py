"""Avro contracts and the Confluent wire-format serde, against an in-memory registry."""

from __future__ import annotations

import datetime
import json
import re
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import avro.schema
import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from conveyor.embedded import free_port
from conveyor.errors import DeserializationError, RegistryUnavailableError, SerializationError
from conveyor.schemas import contracts
from conveyor.schemas.contracts import (
    ALL_CONTRACTS,
    CONTROL_COMMAND,
    DLQ_RECORD,
    JOB_ENVELOPE,
    JOB_EVENT,
    Contract,
)
from conveyor.schemas.serde import Serde
from conveyor.schemas.wire import schema_id
from conveyor.settings import Settings

TOPIC = "acme.jobs.normal"
AT = datetime.datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=datetime.UTC)
LATER = AT + datetime.timedelta(seconds=30)
JOB_ID = uuid.UUID("0b6f4c57-1f0a-4c59-9d8e-0c7b6c1d2e3f")
ATTEMPT_ERRORS = [
    {
        "attempt": 1,
        "error_type": "builtins.TimeoutError",
        "message": "smtp",
        "traceback": "tb",
        "at": AT,
    },
    {
        "attempt": 2,
        "error_type": "builtins.KeyError",
        "message": "'to'",
        "traceback": "",
        "at": LATER,
    },
]

FULL: dict[str, dict[str, Any]] = {
    JOB_ENVELOPE.name: {
        "job_id": JOB_ID,
        "type": "email.send",
        "key": "customer-42",
        "priority": "critical",
        "payload": b'{"to":"a@example.com"}',
        "content_type": contracts.CONTENT_TYPE_AVRO,
        "tenant_id": "acme",
        "batch_id": "b-1",
        "dedupe_key": "welcome-42",
        "attempt": 3,
        "max_attempts": 7,
        "submitted_at": AT,
        "not_before": LATER,
        "duration": "long",
        "errors": ATTEMPT_ERRORS,
    },
    JOB_EVENT.name: {
        "kind": "JobFailed",
        "job_id": JOB_ID,
        "type": "email.send",
        "tenant_id": "acme",
        "priority": "high",
        "attempt": 5,
        "at": AT,
        "result_json": '{"sent":true}',
        "error_reason": "MaxRetries",
        "error_message": "smtp down",
        "error_history": ATTEMPT_ERRORS,
        "attempts": 5,
        "dlq_id": 2**40,
        "failed_at": AT,
        "next_attempt_at": LATER,
        "progress_pct": 33.3,
        "progress_message": "half way",
        "worker_id": "worker-1",
    },
    DLQ_RECORD.name: {
        "job_id": JOB_ID,
        "type": "email.send",
        "key": "customer-42",
        "priority": "low",
        "tenant_id": "acme",
        "batch_id": "b-1",
        "dedupe_key": "welcome-42",
        "payload": b"\x00\x01raw",
        "content_type": contracts.CONTENT_TYPE_RAW,
        "max_attempts": 3,
        "duration": "short",
        "submitted_at": AT,
        "error_reason": "Deserialization",
        "attempts": 2,
        "error_history": ATTEMPT_ERRORS,
        "source_topic": "acme.jobs.low",
        "source_partition": 3,
        "source_offset": 2**35,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "dead_at": LATER,
    },
    CONTROL_COMMAND.name: {
        "command": "cancel",
        "job_id": JOB_ID,
        "issued_at": AT,
        "reason": "operator asked",
    },
}

# Only the fields without defaults; decoding must fill in every default.
MINIMAL: dict[str, dict[str, Any]] = {
    JOB_ENVELOPE.name: {
        "job_id": str(JOB_ID),
        "type": "email.send",
        "priority": "normal",
        "payload": b"{}",
        "submitted_at": 1715949045123,
    },
    JOB_EVENT.name: {"kind": "JobStarted", "job_id": JOB_ID, "type": "t", "attempt": 1, "at": AT},
    DLQ_RECORD.name: {
        "payload": b"",
        "error_reason": "MaxRetries",
        "attempts": 0,
        "source_topic": "acme.jobs.normal",
        "source_partition": 0,
        "source_offset": 0,
        "dead_at": AT,
    },
    CONTROL_COMMAND.name: {"command": "cancel", "job_id": JOB_ID, "issued_at": AT},
}

MINIMAL_DECODED: dict[str, dict[str, Any]] = {
    JOB_ENVELOPE.name: {
        "job_id": JOB_ID,
        "type": "email.send",
        "key": None,
        "priority": "normal",
        "payload": b"{}",
        "content_type": "application/json",
        "tenant_id": None,
        "batch_id": None,
        "dedupe_key": None,
        "attempt": 1,
        "max_attempts": None,
        "submitted_at": AT,
        "not_before": None,
        "duration": "short",
        "errors": [],
    },
    JOB_EVENT.name: {
        "kind": "JobStarted",
        "job_id": JOB_ID,
        "type": "t",
        "tenant_id": None,
        "priority": None,
        "attempt": 1,
        "at": AT,
        "result_json": None,
        "error_reason": None,
        "error_message": None,
        "error_history": [],
        "attempts": None,
        "dlq_id": None,
        "failed_at": None,
        "next_attempt_at": None,
        "progress_pct": None,
        "progress_message": None,
        "worker_id": None,
    },
    DLQ_RECORD.name: {
        "job_id": None,
        "type": None,
        "key": None,
        "priority": None,
        "tenant_id": None,
        "batch_id": None,
        "dedupe_key": None,
        "payload": b"",
        "content_type": "application/json",
        "max_attempts": None,
        "duration": None,
        "submitted_at": None,
        "error_reason": "MaxRetries",
        "attempts": 0,
        "error_history": [],
        "source_topic": "acme.jobs.normal",
        "source_partition": 0,
        "source_offset": 0,
        "trace_id": None,
        "dead_at": AT,
    },
    CONTROL_COMMAND.name: {"command": "cancel", "job_id": JOB_ID, "issued_at": AT, "reason": None},
}

BY_NAME = {c.name: c for c in ALL_CONTRACTS}


@pytest.fixture
def registry() -> Iterator[SchemaRegistryClient]:
    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    yield client
    client.close()


@pytest.fixture
def serde(registry: SchemaRegistryClient) -> Serde:
    return Serde(Settings(), client=registry)


def _fields(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, list):
        for branch in schema:
            yield from _fields(branch)
    elif isinstance(schema, dict):
        for field in schema.get("fields", []):
            yield field
            yield from _fields(field["type"])
        for nested in ("items", "values"):
            if nested in schema:
                yield from _fields(schema[nested])


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.short_name)
def test_schema_str_is_self_contained_and_parses_with_both_avro_libraries(
    contract: Contract,
) -> None:
    """The registered string must parse alone: fastavro (serde) and avro (registry checks)."""
    parsed = fastavro.parse_schema(json.loads(contract.schema_str))
    assert isinstance(parsed, dict)
    assert parsed["name"] == contract.name
    checked = avro.schema.parse(contract.schema_str)
    assert isinstance(checked, avro.schema.RecordSchema)
    assert checked.fullname == contract.name


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.short_name)
def test_every_field_is_documented_and_nullable_fields_default_to_null(contract: Contract) -> None:
    fields = list(_fields(json.loads(contract.schema_str)))
    assert [f["name"] for f in fields if not f.get("doc")] == []
    nullable = [f for f in fields if isinstance(f["type"], list) and "null" in f["type"]]
    assert [f["name"] for f in nullable if f.get("default", "absent") is not None] == []


def test_attempt_error_is_defined_once_and_inlined_where_used() -> None:
    """AttemptError lives in one .avsc; each contract that uses it carries one definition."""
    counts = {c.short_name: c.schema_str.count('"name":"AttemptError"') for c in ALL_CONTRACTS}
    assert counts == {"JobEnvelope": 1, "JobEvent": 1, "DlqRecord": 1, "ControlCommand": 0}


def test_contracts_live_in_the_io_conveyor_namespace() -> None:
    assert sorted(c.name for c in ALL_CONTRACTS) == [
        "io.conveyor.ControlCommand",
        "io.conveyor.DlqRecord",
        "io.conveyor.JobEnvelope",
        "io.conveyor.JobEvent",
    ]
    assert contracts.CONTENT_TYPE_JSON == "application/json"
    assert contracts.CONTENT_TYPE_AVRO == "application/vnd.conveyor.avro"


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.short_name)
def test_record_with_every_field_set_round_trips(serde: Serde, contract: Contract) -> None:
    record = FULL[contract.name]
    assert set(record) == {f["name"] for f in contract.parsed["fields"]}
    decoded = serde.decode(contract, TOPIC, serde.encode(contract, TOPIC, record))
    assert decoded == record


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.short_name)
def test_record_with_only_required_fields_decodes_with_defaults(
    serde: Serde, contract: Contract
) -> None:
    """Also shows plain forms (UUID string, epoch millis) decode as UUID and UTC datetime."""
    data = serde.encode(contract, TOPIC, MINIMAL[contract.name])
    assert serde.decode(contract, TOPIC, data) == MINIMAL_DECODED[contract.name]


def test_wire_format_is_magic_byte_then_registered_schema_id(
    serde: Serde, registry: SchemaRegistryClient
) -> None:
    data = serde.encode(JOB_ENVELOPE, TOPIC, MINIMAL[JOB_ENVELOPE.name])
    registered = registry.get_latest_version(f"{TOPIC}-value")
    assert data[:5] == b"\x00" + struct.pack(">I", registered.schema_id)
    assert schema_id(data) == registered.schema_id
    assert serde.register(JOB_ENVELOPE, TOPIC) == registered.schema_id


def test_encoder_registers_once_per_subject_and_reuses_the_id(
    serde: Serde, registry: SchemaRegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = registry.register_schema_full_response

    def counting(subject: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(subject)
        return original(subject, *args, **kwargs)

    monkeypatch.setattr(registry, "register_schema_full_response", counting)
    first = serde.encode(JOB_EVENT, "acme.jobs.events", MINIMAL[JOB_EVENT.name])
    second = serde.encode(JOB_EVENT, "acme.jobs.events", FULL[JOB_EVENT.name])
    serde.encode(JOB_EVENT, "other.jobs.events", MINIMAL[JOB_EVENT.name])
    assert calls == ["acme.jobs.events-value", "other.jobs.events-value"]
    assert first[:5] == second[:5]


def test_register_all_returns_ids_by_topic_value_subject(serde: Serde) -> None:
    ids = serde.register_all([(JOB_ENVELOPE, "p.jobs.high"), (DLQ_RECORD, "p.jobs.dlq")])
    assert sorted(ids) == ["p.jobs.dlq-value", "p.jobs.high-value"]
    assert ids["p.jobs.high-value"] == serde.register(JOB_ENVELOPE, "p.jobs.high")


def test_newer_reader_reads_what_an_older_writer_wrote(serde: Serde) -> None:
    """An envelope written before duration, errors and not_before existed gets defaults."""
    old = json.loads(JOB_ENVELOPE.schema_str)
    old["fields"] = [
        f for f in old["fields"] if f["name"] not in ("duration", "errors", "not_before")
    ]
    old_contract = Contract.from_schema(old)
    record = {
        k: v for k, v in FULL[JOB_ENVELOPE.name].items() if k in {f["name"] for f in old["fields"]}
    }
    data = serde.encode(old_contract, TOPIC, record)
    decoded = serde.decode(JOB_ENVELOPE, TOPIC, data)
    assert decoded == {**record, "duration": "short", "errors": [], "not_before": None}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "0 byte(s), shorter than the 5-byte Confluent header"),
        (b"\x00\x00\x01", "3 byte(s), shorter than the 5-byte Confluent header"),
        (b'{"job_id": "x"}', "wrong magic byte 0x7b"),
        (b"\x01\x00\x00\x00\x01payload", "wrong magic byte 0x01"),
        (b"\x00\x00\x00\x00\x01", "header but no Avro body"),
        (b"\x00\x7f\xff\xff\xf0garbage", "schema id 2147483632 is unknown to the registry"),
    ],
    ids=["empty", "truncated-header", "json", "magic-1", "header-only", "unknown-id"],
)
def test_undecodable_bytes_raise_deserialization_error_saying_why(
    serde: Serde, data: bytes, expected: str
) -> None:
    with pytest.raises(DeserializationError, match=re.escape(expected)):
        serde.decode(JOB_ENVELOPE, TOPIC, data)


def test_a_tombstone_without_value_raises_deserialization_error(serde: Serde) -> None:
    tombstone: Any = None
    with pytest.raises(DeserializationError, match="message has no value bytes"):
        serde.decode(JOB_ENVELOPE, TOPIC, tombstone)


def test_truncated_or_corrupt_avro_body_raises_deserialization_error(serde: Serde) -> None:
    data = serde.encode(JOB_ENVELOPE, TOPIC, FULL[JOB_ENVELOPE.name])
    for broken in (data[: len(data) // 2], data[:5] + b"\xff" * 40):
        with pytest.raises(DeserializationError, match="Avro body does not decode"):
            serde.decode(JOB_ENVELOPE, TOPIC, broken)


def test_bytes_of_another_contract_raise_deserialization_error(serde: Serde) -> None:
    data = serde.encode(CONTROL_COMMAND, TOPIC, FULL[CONTROL_COMMAND.name])
    with pytest.raises(DeserializationError, match=re.escape("JobEnvelope on acme.jobs.normal")):
        serde.decode(JOB_ENVELOPE, TOPIC, data)


def test_invalid_record_raises_serialization_error_naming_every_field(serde: Serde) -> None:
    record = {
        **MINIMAL[JOB_ENVELOPE.name],
        "job_id": "not-a-uuid",
        "attempt": "two",
        "errors": [{"attempt": 1, "error_type": "E", "message": None, "at": AT}],
    }
    del record["payload"]
    with pytest.raises(SerializationError) as caught:
        serde.encode(JOB_ENVELOPE, TOPIC, record)
    assert str(caught.value) == (
        "JobEnvelope record does not fit its contract: "
        "job_id: expected uuid, got str 'not-a-uuid'; "
        "payload: missing (the field is required); "
        "attempt: expected int, got str 'two'; "
        "errors[0].message: expected string, got NoneType None"
    )


@pytest.mark.parametrize(
    ("contract", "field", "value"),
    [
        (JOB_ENVELOPE, "priority", "urgent"),
        (JOB_ENVELOPE, "duration", "forever"),
        (JOB_EVENT, "kind", "JobExploded"),
        (DLQ_RECORD, "error_reason", "Bored"),
        (CONTROL_COMMAND, "command", "pause"),
    ],
)
def test_closed_string_sets_are_checked_when_encoding(
    serde: Serde, contract: Contract, field: str, value: str
) -> None:
    """Strings, not enums, on the wire; but a writer may only send the known values."""
    record = {**MINIMAL[contract.name], field: value}
    with pytest.raises(SerializationError, match=f"{field}: '{value}' is not one of"):
        serde.encode(contract, TOPIC, record)


def test_problems_report_unknown_fields_and_the_branch_of_a_nullable_union() -> None:
    record = {**MINIMAL[JOB_EVENT.name], "progress_pct": "half", "colour": "red"}
    assert JOB_EVENT.problems(record) == [
        "progress_pct: expected double, got str 'half'",
        "colour: not a field of io.conveyor.JobEvent",
    ]
    assert JOB_EVENT.problems(MINIMAL[JOB_EVENT.name]) == []


def test_unreachable_registry_raises_registry_unavailable_not_a_contract_error() -> None:
    """A registry outage is not the message's fault: the worker must not dead-letter it."""
    url = f"http://127.0.0.1:{free_port()}"
    client = SchemaRegistryClient({"url": url, "max.retries": 0})
    with Serde(Settings(schema_registry_url=url), client=client) as serde:
        with pytest.raises(RegistryUnavailableError, match=f"registry at {url} did not answer"):
            serde.encode(JOB_ENVELOPE, TOPIC, MINIMAL[JOB_ENVELOPE.name])
        with pytest.raises(RegistryUnavailableError):
            serde.decode(JOB_ENVELOPE, TOPIC, b"\x00\x00\x00\x00\x01body")
        with pytest.raises(RegistryUnavailableError):
            serde.register(CONTROL_COMMAND, TOPIC)
    client.close()
