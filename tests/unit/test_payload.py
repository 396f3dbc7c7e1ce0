"""Job payload contracts: schemas derived from dataclasses, validation, JSON and Avro codecs."""

from __future__ import annotations

import dataclasses
import datetime
import re
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from conveyor.errors import DeserializationError, SerializationError
from conveyor.schemas.contracts import CONTENT_TYPE_AVRO, CONTENT_TYPE_JSON
from conveyor.schemas.payload import PayloadCodec, PayloadSchema
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings


@dataclasses.dataclass
class Address:
    street: str
    city: str
    zip_code: str | None = None


@dataclasses.dataclass
class Order:
    order_id: uuid.UUID
    customer: str
    quantity: int
    price: float
    gift: bool
    receipt: bytes
    placed_at: datetime.datetime
    ship_to: Address
    bill_to: Address | None
    lines: list[str]
    tags: dict[str, int]
    previous: list[Address] = dataclasses.field(default_factory=list)
    note: str = "none"
    priority: int | None = 3


@dataclasses.dataclass
class WithSet:
    ids: set[int]


@dataclasses.dataclass
class WithUnion:
    value: int | str


@dataclasses.dataclass
class WithIntKeys:
    counts: dict[int, str]


ADDRESS_SCHEMA = {
    "type": "record",
    "name": "Address",
    "namespace": "io.conveyor.payload",
    "fields": [
        {"name": "street", "type": "string"},
        {"name": "city", "type": "string"},
        {"name": "zip_code", "type": ["null", "string"], "default": None},
    ],
}

EMAIL_SCHEMA = {
    "type": "record",
    "name": "Email",
    "namespace": "com.example",
    "fields": [
        {"name": "to", "type": "string"},
        {"name": "subject", "type": "string"},
        {"name": "retries", "type": "int", "default": 0},
    ],
}


@pytest.fixture
def registry() -> Iterator[SchemaRegistryClient]:
    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    yield client
    client.close()


@pytest.fixture
def codec(registry: SchemaRegistryClient) -> PayloadCodec:
    return PayloadCodec(Serde(Settings(), client=registry), "acme")


def test_schema_from_dataclass_maps_types_nesting_optionals_and_defaults() -> None:
    schema = PayloadSchema.from_dataclass(Order)
    assert schema.name == "io.conveyor.payload.Order"
    assert schema.to_avsc() == {
        "type": "record",
        "name": "Order",
        "namespace": "io.conveyor.payload",
        "fields": [
            {"name": "order_id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "customer", "type": "string"},
            {"name": "quantity", "type": "long"},
            {"name": "price", "type": "double"},
            {"name": "gift", "type": "boolean"},
            {"name": "receipt", "type": "bytes"},
            {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "ship_to", "type": ADDRESS_SCHEMA},
            {"name": "bill_to", "type": ["null", "io.conveyor.payload.Address"], "default": None},
            {"name": "lines", "type": {"type": "array", "items": "string"}},
            {"name": "tags", "type": {"type": "map", "values": "long"}},
            {
                "name": "previous",
                "type": {"type": "array", "items": "io.conveyor.payload.Address"},
                "default": [],
            },
            {"name": "note", "type": "string", "default": "none"},
            {"name": "priority", "type": ["long", "null"], "default": 3},
        ],
    }


@pytest.mark.parametrize(
    ("klass", "expected"),
    [
        (WithSet, "field WithSet.ids: unsupported type set[int]"),
        (WithUnion, "field WithUnion.value: unsupported union int | str"),
        (WithIntKeys, "field WithIntKeys.counts: map keys must be str"),
        (dict, "is not a dataclass"),
    ],
)
def test_unsupported_dataclass_types_raise_type_error_naming_the_field(
    klass: type, expected: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(expected)):
        PayloadSchema.from_dataclass(klass)


def test_from_avsc_rejects_an_invalid_schema() -> None:
    with pytest.raises(ValueError, match="invalid Avro schema"):
        PayloadSchema.from_avsc({"type": "record", "name": "X", "fields": [{"name": "a"}]})
    with pytest.raises(ValueError, match="must be an Avro record schema"):
        PayloadSchema.from_avsc({"type": "array", "items": "string"})


def test_json_payload_is_compact_utf8_and_round_trips(codec: PayloadCodec) -> None:
    payload = {"to": "zoë@example.com", "n": [1, 2.5, None, True]}
    data, content_type = codec.encode("email.send", payload)
    assert (data, content_type) == (
        '{"to":"zoë@example.com","n":[1,2.5,null,true]}'.encode(),
        CONTENT_TYPE_JSON,
    )
    assert codec.decode("email.send", data, content_type) == payload


def test_json_payload_that_is_not_serialisable_is_a_problem(codec: PayloadCodec) -> None:
    assert codec.problems("t", {"ids": {1, 2}}) == [
        "not JSON-serialisable: Object of type set is not JSON serializable"
    ]
    # NaN is not JSON; Python would write it anyway unless told not to.
    [nan_problem] = codec.problems("t", {"ratio": float("nan")})
    assert nan_problem.startswith("not JSON-serialisable: Out of range float values")
    assert codec.problems("t", {"ok": [1, "two"]}) == []
    with pytest.raises(SerializationError, match="payload of t is not JSON-serialisable"):
        codec.encode("t", {"ids": {1, 2}})


def test_problems_list_every_invalid_field_of_a_typed_payload(codec: PayloadCodec) -> None:
    codec.register_type("order.place", Order)
    payload = {
        "order_id": "nope",
        "customer": "c-1",
        "quantity": 1.5,
        "price": 9.99,
        "gift": "yes",
        "receipt": b"",
        "placed_at": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        "ship_to": {"street": "Main St", "city": None},
        "bill_to": {"street": "x", "city": "y", "zip_code": 12345},
        "lines": ["a", 2],
        "tags": {"vip": "yes"},
        "typo": 1,
    }
    assert codec.problems("order.place", payload) == [
        "order_id: expected uuid, got str 'nope'",
        "quantity: expected long, got float 1.5",
        "gift: expected boolean, got str 'yes'",
        "ship_to.city: expected string, got NoneType None",
        "bill_to.zip_code: expected string, got int 12345",
        "lines[1]: expected string, got int 2",
        "tags['vip']: expected long, got str 'yes'",
        "typo: not a field of io.conveyor.payload.Order",
    ]
    with pytest.raises(
        SerializationError, match=re.escape("payload of order.place is invalid: order_id")
    ):
        codec.encode("order.place", payload)


def test_missing_required_fields_and_non_mappings_are_problems(codec: PayloadCodec) -> None:
    codec.register_type("email.send", EMAIL_SCHEMA)
    assert codec.problems("email.send", {"subject": "hi"}) == [
        "to: missing (the field is required)"
    ]
    assert codec.problems("email.send", ["to", "subject"]) == [
        "expected a mapping or a dataclass for com.example.Email, got list"
    ]


def test_typed_payload_is_wire_format_under_the_job_type_subject(
    codec: PayloadCodec, registry: SchemaRegistryClient
) -> None:
    codec.register_type("email.send", EMAIL_SCHEMA)
    data, content_type = codec.encode("email.send", {"to": "a@b", "subject": "hi"})
    registered = registry.get_latest_version("acme.payload.email.send")
    assert content_type == CONTENT_TYPE_AVRO
    assert data[:5] == b"\x00" + struct.pack(">I", registered.schema_id)
    assert codec.register("email.send") == registered.schema_id
    assert codec.decode("email.send", data, content_type) == {
        "to": "a@b",
        "subject": "hi",
        "retries": 0,
    }


def test_dataclass_instance_payload_round_trips_as_a_dict(codec: PayloadCodec) -> None:
    codec.register_type("order.place", PayloadSchema.from_dataclass(Order))
    order = Order(
        order_id=uuid.uuid4(),
        customer="c-1",
        quantity=2,
        price=9.5,
        gift=False,
        receipt=b"\x00\xff",
        placed_at=datetime.datetime(2024, 1, 1, 8, 0, tzinfo=datetime.UTC),
        ship_to=Address("Main St", "Springfield"),
        bill_to=None,
        lines=["book"],
        tags={"vip": 1},
        previous=[Address("Old Rd", "Shelbyville", "12345")],
    )
    assert codec.problems("order.place", order) == []
    data, content_type = codec.encode("order.place", order)
    assert codec.decode("order.place", data, content_type) == dataclasses.asdict(order)


def test_worker_with_a_newer_schema_reads_a_producer_with_an_older_one(
    registry: SchemaRegistryClient,
) -> None:
    """Producer and worker share the registry; the added field gets its default."""
    old = {**EMAIL_SCHEMA, "fields": EMAIL_SCHEMA["fields"][:2]}
    producer = PayloadCodec(Serde(Settings(), client=registry), "acme")
    producer.register_type("email.send", old)
    worker = PayloadCodec(Serde(Settings(), client=registry), "acme")
    worker.register_type("email.send", EMAIL_SCHEMA)
    data, content_type = producer.encode("email.send", {"to": "a@b", "subject": "hi"})
    assert worker.decode("email.send", data, content_type) == {
        "to": "a@b",
        "subject": "hi",
        "retries": 0,
    }


def test_worker_without_a_schema_reads_avro_with_the_writer_schema(
    registry: SchemaRegistryClient,
) -> None:
    producer = PayloadCodec(Serde(Settings(), client=registry), "acme")
    producer.register_type("email.send", EMAIL_SCHEMA)
    data, content_type = producer.encode("email.send", {"to": "a@b", "subject": "hi", "retries": 2})
    worker = PayloadCodec(Serde(Settings(), client=registry), "acme")
    assert worker.decode("email.send", data, content_type) == {
        "to": "a@b",
        "subject": "hi",
        "retries": 2,
    }


@pytest.mark.parametrize(
    ("data", "content_type", "expected"),
    [
        (b'{"to": ', CONTENT_TYPE_JSON, "payload of t is not JSON"),
        (b"\xff\xfe", CONTENT_TYPE_JSON, "payload of t is not JSON"),
        (b"\x00\x00\x00\x00\x09abc", CONTENT_TYPE_AVRO, "schema id 9 is unknown"),
        (b"hello", CONTENT_TYPE_AVRO, "wrong magic byte"),
        (b"{}", "text/xml", "unknown content type 'text/xml'"),
    ],
)
def test_undecodable_payloads_raise_deserialization_error(
    codec: PayloadCodec, data: bytes, content_type: str, expected: str
) -> None:
    with pytest.raises(DeserializationError, match=expected):
        codec.decode("t", data, content_type)


def test_a_job_type_keeps_one_schema(codec: PayloadCodec) -> None:
    first = codec.register_type("email.send", EMAIL_SCHEMA)
    assert codec.register_type("email.send", PayloadSchema.from_avsc(EMAIL_SCHEMA)) == first
    assert codec.schema_for("email.send") == first
    assert codec.schema_for("other") is None
    with pytest.raises(ValueError, match="already has a different payload schema"):
        codec.register_type("email.send", Address)


def test_union_without_null_reports_every_branch(codec: PayloadCodec) -> None:
    schema: dict[str, Any] = {
        "type": "record",
        "name": "Either",
        "fields": [{"name": "v", "type": ["int", "string"]}],
    }
    codec.register_type("either", schema)
    assert codec.problems("either", {"v": 1.5}) == ["v: float 1.5 matches none of int, string"]
    assert codec.problems("either", {"v": "ok"}) == []
